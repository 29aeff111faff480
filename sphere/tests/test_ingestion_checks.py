from sphere.checks import check_ingestion


def ids(settings) -> set[str]:
    return {problem.id for problem in check_ingestion(None)}


def test_the_default_configuration_passes(settings):
    assert ids(settings) == set()


def test_an_inverted_uncertain_band_is_an_error(settings):
    settings.UNCERTAIN_BAND = (0.8, 0.3)
    assert "sphere.E006" in ids(settings)


def test_a_claim_timeout_within_the_task_time_limit_is_a_warning(settings):
    settings.PACKAGE_CLAIM_TIMEOUT_S = settings.CELERY_TASK_TIME_LIMIT
    assert "sphere.W007" in ids(settings)


def test_a_visibility_timeout_within_the_task_time_limit_is_a_warning(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    assert "sphere.W008" in ids(settings)
