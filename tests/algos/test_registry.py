import typing

from dynalab.algos import ALGOS
from dynalab.config import Algo


def test_cli_choices_match_the_registry():
    assert set(typing.get_args(Algo)) == set(ALGOS)
