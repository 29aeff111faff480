import pytest

from labeling.tests.factories import digits


@pytest.fixture(autouse=True)
def _digits_class_set(request):
    """The digits class set comes with the migrations, but a transactional test's flush deletes
    it for the tests that run after it: put it back for every labeling test using the database."""
    if request.node.get_closest_marker("django_db") is not None:
        digits()
