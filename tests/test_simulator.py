"""The fleet simulator on its own: what each group sees, how devices enroll, and that its ground
truth matches what actually reached the server (a fake one speaking the device protocol:
edge_client/tests/flaky_server.py). The whole loop against Sphere is tests/test_closed_loop.py."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest

from edge_client.datagen import load_digits_sample
from edge_client.pipeline import bootstrap
from edge_client.sync import EnrollmentError
from edge_client.tests.flaky_server import ENROLLMENT_TOKEN, FlakyServer
from registry.bundles import build_bundle
from sphere.demo.simulator import (
    AFTER,
    BEFORE,
    Accuracy,
    DeviceSettings,
    Fleet,
    Scenario,
    field_digits,
    image_digest,
    parse_groups,
    split_evenly,
)

DIGITS = [str(n) for n in range(10)]
ONSET = 60


def fleet(server, tmp_path, groups, **settings) -> Fleet:
    settings = {"rate": 0, "wait_for_model_s": 0, **settings}
    return Fleet(
        groups=groups,
        tokens={"*": ENROLLMENT_TOKEN},
        data_dir=tmp_path / "fleet",
        settings=DeviceSettings(server_url=server.url, **settings),
        scenario=Scenario(onset=ONSET),
    )


def drain(device, cycles: int = 20) -> None:
    """Sync until the outbox has nothing pending (the device's own sync thread does this live)."""
    for _ in range(cycles):
        if not device.sync.sync_once(heartbeat=True).backlog and not _pending(device):
            return
    raise AssertionError(f"{device.name} still has pending records: {device.store.counts()}")


def _pending(device) -> int:
    return sum(statuses.get("pending", 0) for statuses in device.store.counts().values())


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# --- groups and streams -------------------------------------------------------------------------


def test_groups_are_given_as_counts_or_spread_evenly():
    assert parse_groups("control:4,shifted:4,novel:4") == {"control": 4, "shifted": 4, "novel": 4}
    assert parse_groups("shifted:2, shifted:1") == {"shifted": 3}
    assert split_evenly(7) == {"control": 3, "shifted": 2, "novel": 2}
    for bad in ("ocean:2", "control:x", "control:0", ""):
        with pytest.raises(ValueError):
            parse_groups(bad)


def test_each_group_sees_its_scenario_and_changes_only_at_the_onset():
    scenario = Scenario(onset=ONSET)
    seen = {group: list(itertools.islice(scenario.stream(group, seed=3), 2 * ONSET)) for group in scenario_groups()}

    for group, samples in seen.items():
        before, after = samples[:ONSET], samples[ONSET:]
        assert {label for _, label, _ in before} <= set(range(7)), group
        assert not any(meta["phase"] == "drifted" for _, _, meta in before), group
        if group == "control":
            assert {label for _, label, _ in after} <= set(range(7))
            assert not any(meta["phase"] == "drifted" for _, _, meta in after)
        else:
            assert all(meta["phase"] == "drifted" for _, _, meta in after), group
    assert {label for _, label, _ in seen["novel"][ONSET:]} == {7, 8, 9}
    # Washed out: the same digits with a fifth of their contrast.
    spread = [float(np.std(image)) for image, _, _ in seen["shifted"]]
    assert np.mean(spread[ONSET:]) < 0.3 * np.mean(spread[:ONSET])


def scenario_groups():
    return ("control", "shifted", "novel")


def test_no_held_out_image_ever_reaches_a_device():
    scenario = Scenario(onset=0)
    digits = load_digits_sample()
    assert not set(field_digits().test_index) & set(np.setdiff1d(digits.test_index, field_digits().test_index))
    for group in scenario_groups():
        held_out, labels = scenario.holdout(group)
        streamed = {image_digest(image) for image, _, _ in itertools.islice(scenario.stream(group, seed=1), 3000)}
        assert len(held_out) > 50 and set(labels) <= (set(range(7, 10)) if group == "novel" else set(range(7)))
        assert not streamed & {image_digest(image) for image in held_out}, group


# --- devices ------------------------------------------------------------------------------------


def test_devices_enroll_over_http_with_their_groups_token_a_name_and_tags(tmp_path):
    with FlakyServer() as server:
        simulated = fleet(server, tmp_path, {"control": 1, "shifted": 2})
        for device in simulated.devices:
            device.prepare()

        bodies = sorted(server.enrollments.values(), key=lambda body: body["name"])
        assert [(b["name"], b["tags"], b["enrollment_token"]) for b in bodies] == [
            ("control-01", ["simulated", "control"], ENROLLMENT_TOKEN),
            ("shifted-01", ["simulated", "shifted"], ENROLLMENT_TOKEN),
            ("shifted-02", ["simulated", "shifted"], ENROLLMENT_TOKEN),
        ]
        assert len({device.data_dir for device in simulated.devices}) == 3  # one data directory each
        assert all(device.device_id == server.device_id for device in simulated.devices)


def test_a_group_without_a_token_or_a_refused_token_stops_before_any_sample(tmp_path):
    with pytest.raises(ValueError, match="no enrollment token for group 'novel'"):
        Fleet(groups={"novel": 1}, tokens={"control": "t"}, data_dir=tmp_path, settings=DeviceSettings("http://x"))
    with FlakyServer() as server:
        refused = Fleet(
            groups={"control": 1},
            tokens={"control": "sphe_wrong"},
            data_dir=tmp_path / "fleet",
            settings=DeviceSettings(server_url=server.url),
        ).devices[0]
        with pytest.raises(EnrollmentError):
            refused.prepare()
        assert refused.samples == 0


def test_the_ledger_holds_the_truth_of_every_record_the_server_received(tmp_path):
    with FlakyServer() as server:
        device = fleet(server, tmp_path, {"shifted": 1}).devices[0]
        device.prepare()
        correct = [device.step() for _ in range(ONSET + 120)]
        drain(device)

    stream = list(itertools.islice(Scenario(onset=ONSET).stream("shifted", device.seed), ONSET + 120))
    predictions, samples = server.records["prediction"], server.records["quarantine_sample"]
    assert len(predictions) == ONSET + 120 and samples and server.records["drift_event"]
    for record_id, record in predictions.items():
        truth = device.ledger.truth(record_id)
        assert truth.sample < ONSET + 120 and truth.label == stream[truth.sample][1]
        assert truth.drifted == (truth.sample >= ONSET)
        assert (record["label"] == str(truth.label)) == correct[truth.sample]
    for record_id in samples:
        truth = device.ledger.truth(record_id)
        shipped = npy(server.attachments[f"{record_id}/image.npy"])  # what the server stores and labelers see
        np.testing.assert_allclose(shipped, stream[truth.sample][0].astype(np.float32))
        assert image_digest(stream[truth.sample][0]) == truth.image
    for record_id in server.records["drift_event"]:
        assert device.ledger.kind(record_id) == "drift_event"
    detected = [d for d in device.detections if d.drifted]
    assert detected, "the shift raised no drift event"
    assert detected[0].delay == detected[0].sample - ONSET and device.ledger.truth(detected[0].event_id).drifted


def test_accuracy_is_counted_per_group_model_version_and_phase():
    accuracy = Accuracy()
    for correct in (True, True, False, True):
        accuracy.add("shifted", "digits@1", BEFORE, correct)
    for correct in (False, False, True):
        accuracy.add("shifted", "digits@1", AFTER, correct)
    accuracy.add("shifted", "digits@2", AFTER, True)

    assert accuracy.of("shifted", "digits@1", BEFORE) == (0.75, 4)
    assert accuracy.of("shifted", "digits@1", AFTER) == (pytest.approx(1 / 3), 3)
    assert accuracy.of("novel", "digits@1", AFTER) == (None, 0)
    assert accuracy.recent("shifted") == pytest.approx(5 / 8)
    assert [(r["model_version"], r["phase"], r["samples"]) for r in accuracy.table()] == [
        ("digits@1", AFTER, 3),
        ("digits@1", BEFORE, 4),
        ("digits@2", AFTER, 1),
    ]


def test_a_bundle_from_the_server_serves_from_the_next_sample_and_is_what_accuracy_is_counted_for(tmp_path):
    from edge_client.extractors import TFLiteExtractor

    transform, knn = bootstrap(TFLiteExtractor.shipped(), size=150, n_components=16, k=3)
    built = build_bundle(label="digits@7", classes=DIGITS, transform=transform, knn=knn, feature_dim=64)
    with FlakyServer() as server:
        server.files["digits-7.tar.gz"] = built.data
        model = {"version": "digits@7", "sha256": built.sha256, "url": "/files/digits-7.tar.gz", "size": built.size}
        server.desired["model"] = model
        device = fleet(server, tmp_path, {"control": 1}, wait_for_model_s=10).devices[0]
        device.prepare()

        assert device.wait_for_model() == "digits@7"
        for _ in range(20):
            device.step()
        drain(device)

    assert device.accuracy.of("control", "digits@7", BEFORE)[1] == 20
    assert {record["model_version"] for record in server.records["prediction"].values()} == {"digits@7"}
    assert device.pipeline.transform.output_dim == 16
