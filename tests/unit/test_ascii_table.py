"""calicoctl's classic tables (tablewriter v0.0.5): the reference's `ipam show` example, and
tablewriter's own documented examples, byte for byte."""

from __future__ import annotations

import pytest

from percale.ctl import ascii_table
from percale.ctl.ipam_show import USAGE_HEADERS, usage_row

pytestmark = pytest.mark.unit

# calico.md §5.3, the classic `calicoctl ipam show --show-blocks`.
CALICO_EXAMPLE = """\
+----------+------------------+-----------+------------+--------------+
| GROUPING |       CIDR       | IPS TOTAL | IPS IN USE |   IPS FREE   |
+----------+------------------+-----------+------------+--------------+
| IP Pool  | 192.168.0.0/16   |     65536 | 78 (0%)    | 65458 (100%) |
| Block    | 192.168.15.64/26 |        64 | 2 (3%)     | 62 (97%)     |
+----------+------------------+-----------+------------+--------------+
"""


def test_the_reference_ipam_show_example_from_literal_cells():
    rows = [
        ["IP Pool", "192.168.0.0/16", "65536", "78 (0%)", "65458 (100%)"],
        ["Block", "192.168.15.64/26", "64", "2 (3%)", "62 (97%)"],
    ]
    assert ascii_table.render(USAGE_HEADERS, rows) == CALICO_EXAMPLE


def test_the_reference_ipam_show_example_from_counts():
    rows = [usage_row("IP Pool", "192.168.0.0/16", 65536, 78),
            usage_row("Block", "192.168.15.64/26", 64, 2)]
    assert ascii_table.render(USAGE_HEADERS, rows) == CALICO_EXAMPLE


def test_tablewriter_example_short():
    # tablewriter v0.0.5 table_test.go, ExampleShort.
    rows = [["A", "The Good", "500"], ["B", "The Very very Bad Man", "288"],
            ["C", "The Ugly", "120"], ["D", "The Gopher", "800"]]
    assert ascii_table.render(["Name", "Sign", "Rating"], rows) == """\
+------+-----------------------+--------+
| NAME |         SIGN          | RATING |
+------+-----------------------+--------+
| A    | The Good              |    500 |
| B    | The Very very Bad Man |    288 |
| C    | The Ugly              |    120 |
| D    | The Gopher            |    800 |
+------+-----------------------+--------+
"""


def test_tablewriter_example_long_wraps_at_30_with_minimum_raggedness():
    # tablewriter v0.0.5 ExampleLong, with its default borders and without the stray fourth cell.
    # The column keeps the full 30 even where the wrapped lines are narrower.
    rows = [
        ["Learn East has computers with adapted keyboards with enlarged print etc",
         "  Some Data  ", " Another Data"],
        ["Instead of lining up the letters all ", "the way across, he splits the keyboard in two",
         "Like most ergonomic keyboards"],
    ]
    assert ascii_table.render(["Name", "Sign", "Rating"], rows) == """\
+--------------------------------+--------------------------------+-------------------------------+
|              NAME              |              SIGN              |            RATING             |
+--------------------------------+--------------------------------+-------------------------------+
| Learn East has computers       |   Some Data                    |  Another Data                 |
| with adapted keyboards with    |                                |                               |
| enlarged print etc             |                                |                               |
| Instead of lining up the       | the way across, he splits the  | Like most ergonomic keyboards |
| letters all                    | keyboard in two                |                               |
+--------------------------------+--------------------------------+-------------------------------+
"""


def test_headers_centre_with_the_odd_space_on_the_right():
    assert ascii_table.render(["ip"], [["10.0.0.100"]]) == (
        "+------------+\n"
        "|     IP     |\n"   # width 10, gap 8: 4 and 4
        "+------------+\n"
        "| 10.0.0.100 |\n"
        "+------------+\n"
    )
    assert ascii_table.render(["ip"], [["10.0.0.10"]]).splitlines()[1] == "|    IP     |"  # 3 and 4


@pytest.mark.parametrize(("cell", "right"), [
    ("65536", True), ("-7", True), ("1,234,567", True), ("3.25", True),
    ("1.6777e+07", False), ("78 (0%)", False), ("12,34", False), ("10%", False), ("", False),
])
def test_only_plain_numbers_are_right_aligned(cell, right):
    line = ascii_table.render(["a wide header"], [[cell]]).splitlines()[3]
    assert line == ("| " + (cell.rjust(13) if right else cell.ljust(13)) + " |")


def test_header_words_joined_by_underscores_or_dots_are_split():
    assert ascii_table.render(["ips_total", "node.name", "v1.2"], [["1", "2", "3"]]).splitlines()[1] \
        == "| IPS TOTAL | NODE NAME | V1.2 |"


def test_a_table_with_no_rows_still_has_borders_and_header():
    assert ascii_table.render(["IP", "BLOCK"], []) == (
        "+----+-------+\n"
        "| IP | BLOCK |\n"
        "+----+-------+\n"
        "+----+-------+\n"
    )


def test_wide_characters_take_two_columns():
    assert ascii_table.render(["name"], [["日本"]]) == (
        "+------+\n"
        "| NAME |\n"
        "+------+\n"
        "| 日本 |\n"
        "+------+\n"
    )


def test_a_long_word_is_never_broken():
    word = "k8s-pod-network.0123456789abcdef0123456789abcdef"
    assert ascii_table.render(["handle"], [[word]]).splitlines()[3] == f"| {word} |"


def test_rows_must_fill_every_column():
    with pytest.raises(ValueError, match="2 cells for 3 headers"):
        ascii_table.render(["a", "b", "c"], [["1", "2"]])
