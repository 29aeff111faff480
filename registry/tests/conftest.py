import pytest

from registry.tests.factories import digits_family


@pytest.fixture(autouse=True)
def _digits_family(request):
    """The digits family comes with the migrations, but a transactional test's flush deletes it
    for the tests that run after it: put it back for every registry test using the database."""
    if request.node.get_closest_marker("django_db") is not None:
        digits_family()
