"""ORDER as calicoctl prints it: Go's %v of a float64 (shortest digits that read back the same,
exponent form below 1e-4 and from 1e6), checked against values `go run` printed."""

from __future__ import annotations

import pytest

from percale.ctl.printer import go_float

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value, printed", [
    (1234.5678, "1234.5678"), (1234.5679, "1234.5679"), (1234567, "1.234567e+06"),
    (100, "100"), (123456, "123456"), (999999, "999999"), (1e6, "1e+06"), (1e20, "1e+20"),
    (1e21, "1e+21"), (0.0001, "0.0001"), (0.00001, "1e-05"), (1e-7, "1e-07"),
    (12345678.5, "1.23456785e+07"), (0, "0"), (-0.0, "-0"), (-3.5, "-3.5"),
    (1.5e300, "1.5e+300"), (0.5, "0.5"), (1000, "1000"), (5e-324, "5e-324"),
])
def test_go_float_prints_as_go_does(value, printed):
    assert go_float(float(value)) == printed
