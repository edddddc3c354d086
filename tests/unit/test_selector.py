"""Calico's selector language: examples, error positions, and properties checked against an oracle.

The property tests build selectors as plain tuples and judge them with `oracle` below, which shares
nothing with percale.api.selector, so a bug has to be made twice to go unnoticed.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from percale.api.selector import MAX_NESTING, Selector, SelectorError, matches, parse

pytestmark = pytest.mark.unit

NODE = {"rack": "a", "zone": "eu-1", "kubernetes.io/hostname": "node-7", "route-reflector": "true"}


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("all()", {}, True),
        ("all()", NODE, True),
        ("", {}, True),
        ("  \t\n ", NODE, True),
        ("has(rack)", NODE, True),
        ("has(row)", NODE, False),
        ("!has(row)", NODE, True),
        ("!has(rack)", NODE, False),
        ("rack == 'a'", NODE, True),
        ('rack == "a"', NODE, True),
        ("rack == 'b'", NODE, False),
        ("row == 'a'", NODE, False),
        ("rack == ''", {"rack": ""}, True),
        ("rack != 'b'", NODE, True),
        ("rack != 'a'", NODE, False),
        ("row != 'a'", NODE, True),
        ("rack in {'a', 'b'}", NODE, True),
        ("rack in {'b', 'c'}", NODE, False),
        ("rack in {}", NODE, False),
        ("row in {'a'}", NODE, False),
        ("rack not in {'b', 'c'}", NODE, True),
        ("rack not in {'a'}", NODE, False),
        ("rack not in {}", NODE, True),
        ("row not in {'a'}", NODE, True),
        ("zone contains 'u-'", NODE, True),
        ("zone contains ''", NODE, True),
        ("zone contains 'us'", NODE, False),
        ("row contains ''", NODE, False),
        ("kubernetes.io/hostname starts with 'node-'", NODE, True),
        ("kubernetes.io/hostname starts with '7'", NODE, False),
        ("row starts with ''", NODE, False),
        ("kubernetes.io/hostname ends with '-7'", NODE, True),
        ("kubernetes.io/hostname ends with 'node'", NODE, False),
        ("row ends with ''", NODE, False),
        ("route-reflector == 'true'", NODE, True),
        ("rack == 'a' && !has(edge)", NODE, True),
        ("rack == 'a' && has(edge)", NODE, False),
        ("rack == 'b' || has(zone)", NODE, True),
        ("rack == 'b' || has(row)", NODE, False),
        # && binds tighter than ||: true || (false && false), not (true || false) && false.
        ("has(rack) || has(row) && has(edge)", NODE, True),
        ("(has(rack) || has(row)) && has(edge)", NODE, False),
        ("has(row) && has(edge) || has(rack)", NODE, True),
        # ! binds tighter than &&, and applies to a whole group in parentheses.
        ("!has(row) && has(edge)", NODE, False),
        ("!(has(row) && has(edge))", NODE, True),
        ("!(has(rack) || has(row))", NODE, False),
        ("!!has(rack)", NODE, True),
        ("((has(rack)) && ((zone == 'eu-1') || (has(row))))", NODE, True),
        ("(((!(has(rack)))))", NODE, False),
        ("rack=='a'&&zone!='x'||has(row)", NODE, True),
        ('  rack\t==\n"a"  ', NODE, True),
        ("note == \"it's\"", {"note": "it's"}, True),
        ("note == 'say \"hi\"'", {"note": 'say "hi"'}, True),
        ("note == 'a && b) || ('", {"note": "a && b) || ("}, True),
        ("example.com/my_label.v2 == 'x'", {"example.com/my_label.v2": "x"}, True),
        ("9lives == 'x'", {"9lives": "x"}, True),
        # Words that are operators elsewhere are ordinary label keys where a key is expected.
        ("has == 'x'", {"has": "x"}, True),
        ("all != 'x'", {}, True),
        ("in in {'x'}", {"in": "x"}, True),
        ("not not in {'x'}", {"not": "y"}, True),
        ("has(has) && has(all)", {"has": "", "all": ""}, True),
        ("global == 'x' && has(global)", {"global": "x"}, True),
    ],
)
def test_examples(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse(selector).matches(labels) is expected
    assert matches(selector, labels) is expected


@pytest.mark.parametrize(
    ("selector", "canonical"),
    [
        ("", "all()"),
        ("all ( )", "all()"),
        ("rack=='a'&&!has( edge )", 'rack == "a" && !has(edge)'),
        ("note == \"it's\"", 'note == "it\'s"'),
        ("note == 'say \"hi\"'", "note == 'say \"hi\"'"),
        ("k in {'b','a' , 'b'}", 'k in {"a", "b"}'),
        ("k not in { }", "k not in {}"),
        ("k   starts   with 'x'", 'k starts with "x"'),
        ("(has(a) && has(b)) && has(c)", "has(a) && has(b) && has(c)"),
        ("has(a) || (has(b) || has(c))", "has(a) || has(b) || has(c)"),
        ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
        ("has(a) || (has(b) && has(c))", "has(a) || has(b) && has(c)"),
        ("!(has(a) && has(b))", "!(has(a) && has(b))"),
        ("!(has(a))", "!has(a)"),
        ("!(!(k == 'v'))", '!!k == "v"'),
    ],
)
def test_canonical_text(selector: str, canonical: str) -> None:
    assert str(parse(selector)) == canonical
    assert parse(canonical) == parse(selector)


def test_equal_selectors_are_interchangeable() -> None:
    assert parse("") == parse("all()")
    assert parse("k in {'a', 'b'}") == parse('k in {"b", "a", "a"}')
    assert hash(parse("k in {'a', 'b'}")) == hash(parse('k in {"b", "a", "a"}'))
    assert parse("has(a)") != parse("has(b)")
    assert parse("k == 'v'") != parse("k != 'v'")


def test_selectors_are_cached_and_frozen() -> None:
    selector = parse("rack == 'a'")
    assert parse("rack == 'a'") is selector
    assert isinstance(selector, Selector)
    assert dataclasses.is_dataclass(selector)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(selector, dataclasses.fields(selector)[0].name, "row")
    assert repr(selector) == """<Selector 'rack == "a"'>"""


LONGEST_NAME = "n" * 63
LONGEST_PREFIX = ("p" * 63 + ".") * 3 + "p" * 61


@pytest.mark.parametrize(
    "key",
    ["a", "A", "9", "route-reflector", "a.b_c-d", "kubernetes.io/hostname", "x-y.example.com/A_b",
     LONGEST_NAME, f"{LONGEST_PREFIX}/{LONGEST_NAME}"],
)
def test_valid_label_keys(key: str) -> None:
    assert matches(f"has({key})", {key: ""})


@pytest.mark.parametrize(
    "key",
    ["-a", "a-", "_a", "a.", ".", "/a", "a/", "a/b/c", "Example.com/a", "a..b/c", "-a.com/b",
     LONGEST_NAME + "n", f"{LONGEST_PREFIX}p/a"],
)
def test_invalid_label_keys(key: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse(f"x == 'v' || {key} == 'v'")
    assert caught.value.position == len("x == 'v' || ")
    assert key in caught.value.reason


@pytest.mark.parametrize(
    ("selector", "position", "reason"),
    [
        ("(has(a)", 7, "expected '&&', '||' or ')'"),
        ("((has(a) && has(b))", 19, "expected '&&', '||' or ')'"),
        ("rack == ", 8, "expected a quoted string"),
        ("rack ==", 7, "expected a quoted string"),
        ("rack == 'a' && row != ", 22, "expected a quoted string"),
        ("rack contains", 13, "expected a quoted string"),
        ("rack", 4, "expected an operator"),
        ("rack 'a'", 5, "expected an operator"),
        ("rack = 'a'", 5, "unexpected character '='"),
        ("rack starts 'a'", 12, "expected 'with'"),
        ("rack not {'a'}", 9, "expected 'in'"),
        ("-rack == 'a'", 0, "label key '-rack'"),
        ("has(-rack)", 4, "label key '-rack'"),
        ("has(a) has(b)", 7, "expected '&&', '||' or the end of the selector"),
        ("rack == 'a')", 11, "expected '&&', '||' or the end of the selector"),
        ("note == 'it''s'", 12, "expected '&&', '||' or the end of the selector"),
        ("rack == 'a' rack", 12, "expected '&&', '||' or the end of the selector"),
        ("rack == 'a", 8, "unterminated string"),
        ('rack in {"a", "b}', 14, "unterminated string"),
        ("== 'a'", 0, "expected a label key"),
        ("  == 'a'", 2, "expected a label key"),
        ("has(a) &&", 9, "expected a label key"),
        ("has(a) && || has(b)", 10, "expected a label key"),
        ("&& has(a)", 0, "expected a label key"),
        ("has(a) || ", 10, "expected a label key"),
        ("!", 1, "expected a label key"),
        ("()", 1, "expected a label key"),
        (")", 0, "expected a label key"),
        ("has(a) & has(b)", 7, "unexpected character '&'"),
        ("has(a) | has(b)", 7, "unexpected character '|'"),
        ("rack == 'a' @", 12, "unexpected character '@'"),
        ("rack in 'a'", 8, "expected '{'"),
        ("rack in", 7, "expected '{'"),
        ("rack not in", 11, "expected '{'"),
        ("rack in {'a',}", 13, "expected a quoted string"),
        ("rack in {'a' 'b'}", 13, "expected ',' or '}'"),
        ("rack in {'a'", 12, "expected ',' or '}'"),
        ("rack in {rack}", 9, "expected a quoted string"),
        ("has()", 4, "expected a label key"),
        ("has(a", 5, "expected ')'"),
        ("has(a b)", 6, "expected ')'"),
        ("all(a)", 4, "expected ')'"),
        # Calico's namespaceSelector for what lives outside namespaces; percale has none of it.
        ("global()", 0, "global() selects host endpoints and global network sets"),
        ("has(a) && global()", 10, "which percale does not have"),
    ],
)
def test_invalid_selectors(selector: str, position: int, reason: str) -> None:
    with pytest.raises(SelectorError) as caught:
        parse(selector)
    assert caught.value.selector == selector
    assert caught.value.position == position
    assert reason in caught.value.reason


def test_error_reads_as_one_sentence() -> None:
    with pytest.raises(SelectorError) as caught:
        parse("rack == ")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.selector == "rack == "
    assert error.position == 8
    assert error.reason == "expected a quoted string"
    assert str(error) == 'invalid selector "rack == ": expected a quoted string at position 8'
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)


def test_nesting_is_capped_before_python_recursion_is() -> None:
    deepest = "(" * MAX_NESTING + "has(a)" + ")" * MAX_NESTING
    assert matches(deepest, {"a": ""})
    assert str(parse(deepest)) == "has(a)"
    with pytest.raises(SelectorError) as caught:
        parse("(" + deepest + ")")
    assert caught.value.position == MAX_NESTING
    assert matches("!" * MAX_NESTING + "has(a)", {"a": ""})
    with pytest.raises(SelectorError):
        parse("!" * (MAX_NESTING + 1) + "has(a)")


def test_long_flat_selectors_do_not_recurse() -> None:
    keys = [f"k{i}" for i in range(3000)]
    selector = parse(" && ".join(f"has({key})" for key in keys))
    assert selector.matches(dict.fromkeys(keys, ""))
    assert not selector.matches(dict.fromkeys(keys[1:], ""))
    assert parse(str(selector)) == selector


# ---- properties, against a test-side model of the language

# Few keys and values, so that generated selectors and label sets actually meet. The keys include
# words the grammar uses elsewhere; the values include quotes and operator characters.
KEYS = (
    "a", "rack", "kubernetes.io/hostname", "route-reflector", "x.y_z", "has", "in", "not", "all",
)
VALUES = ("", "a", "b", "ab", "node a", "it's", 'say "hi"', "x && y) ||")
COMPARISONS = ("==", "!=", "contains", "starts with", "ends with")

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)
label_sets = st.dictionaries(keys, values, max_size=len(KEYS))

leaves = st.one_of(
    st.just(("all",)),
    st.tuples(st.just("has"), keys),
    st.tuples(st.sampled_from(COMPARISONS), keys, values),
    st.tuples(st.sampled_from(("in", "not in")), keys, st.lists(values, max_size=3).map(tuple)),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.tuples(st.just("!"), inner),
        st.tuples(st.sampled_from(("&&", "||")), inner, inner),
    ),
    max_leaves=12,
)


def oracle(tree: tuple, labels: dict[str, str]) -> bool:
    match tree:
        case ("all",):
            return True
        case ("has", key):
            return key in labels
        case ("!", operand):
            return not oracle(operand, labels)
        case ("&&", left, right):
            return oracle(left, labels) and oracle(right, labels)
        case ("||", left, right):
            return oracle(left, labels) or oracle(right, labels)
        case ("!=" | "not in", key, _) if key not in labels:
            return True
        case (_, key, _) if key not in labels:
            return False
        case ("==", key, value):
            return labels[key] == value
        case ("!=", key, value):
            return labels[key] != value
        case ("in", key, members):
            return labels[key] in members
        case ("not in", key, members):
            return labels[key] not in members
        case ("contains", key, value):
            return value in labels[key]
        case ("starts with", key, value):
            return labels[key].startswith(value)
        case ("ends with", key, value):
            return labels[key].endswith(value)
    raise AssertionError(f"oracle does not know {tree!r}")


# Optional whitespace may be empty; a gap separates two words that would otherwise run together.
optional_spaces = st.sampled_from(("", " ", "  ", "\t", "\n "))
gaps = st.sampled_from((" ", "   ", "\t", "\n"))


@st.composite
def rendered(draw: st.DrawFn, tree: tuple) -> str:
    """Selector text for `tree`, with random whitespace, quote style and redundant parentheses."""

    def space() -> str:
        return draw(optional_spaces)

    def gap() -> str:
        return draw(gaps)

    def quoted(value: str) -> str:
        quote = "'" if '"' in value else '"' if "'" in value else draw(st.sampled_from("'\""))
        return quote + value + quote

    def operand(child: tuple, needs_parentheses: bool) -> str:
        text = render(child)
        if needs_parentheses or draw(st.integers(0, 3)) == 0:
            return f"({space()}{text}{space()})"
        return text

    def render(node: tuple) -> str:
        match node:
            case ("all",):
                return f"all{space()}({space()})"
            case ("has", key):
                return f"has{space()}({space()}{key}{space()})"
            case ("!", child):
                return "!" + space() + operand(child, child[0] in ("&&", "||"))
            case ("&&", left, right):
                return (
                    operand(left, left[0] == "||") + space() + "&&" + space()
                    + operand(right, right[0] == "||")
                )
            case ("||", left, right):
                return operand(left, False) + space() + "||" + space() + operand(right, False)
            case (("in" | "not in") as op, key, members):
                listed = ("," + space()).join(quoted(member) for member in members)
                braced = "{" + space() + listed + space() + "}"
                return f"{key}{gap()}{op.replace(' ', gap())}{space()}{braced}"
            case (("==" | "!=") as op, key, value):
                return f"{key}{space()}{op}{space()}{quoted(value)}"
            case (op, key, value):
                return f"{key}{gap()}{op.replace(' ', gap())}{space()}{quoted(value)}"
        raise AssertionError(f"cannot render {node!r}")

    return space() + render(tree) + space()


def plainly_quoted(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


def plain(tree: tuple) -> str:
    """Selector text for `tree` with every subexpression in parentheses."""
    match tree:
        case ("all",):
            return "all()"
        case ("has", key):
            return f"has({key})"
        case ("!", child):
            return f"!({plain(child)})"
        case (("&&" | "||") as op, left, right):
            return f"({plain(left)}) {op} ({plain(right)})"
        case (("in" | "not in") as op, key, members):
            return f"{key} {op} {{" + ", ".join(map(plainly_quoted, members)) + "}"
        case (op, key, value):
            return f"{key} {op} {plainly_quoted(value)}"
    raise AssertionError(f"cannot render {tree!r}")


@st.composite
def trees_with_text(draw: st.DrawFn) -> tuple[tuple, str]:
    tree = draw(trees)
    return tree, draw(rendered(tree))


@settings(max_examples=300)
@given(trees_with_text(), label_sets)
def test_matching_agrees_with_the_oracle(
    tree_and_text: tuple[tuple, str], labels: dict[str, str]
) -> None:
    tree, text = tree_and_text
    assert parse(text).matches(labels) is oracle(tree, labels)


@given(trees_with_text())
def test_canonical_text_round_trips(tree_and_text: tuple[tuple, str]) -> None:
    tree, text = tree_and_text
    selector = parse(text)
    canonical = str(selector)
    assert parse(canonical) == selector
    assert str(parse(canonical)) == canonical
    # Whitespace, quotes and redundant parentheses are not part of a selector's identity.
    assert parse(plain(tree)) == selector


@given(trees, trees, label_sets)
def test_de_morgan(left: tuple, right: tuple, labels: dict[str, str]) -> None:
    a, b = plain(left), plain(right)
    assert matches(f"!(({a}) && ({b}))", labels) is matches(f"!({a}) || !({b})", labels)
    assert matches(f"!(({a}) || ({b}))", labels) is matches(f"!({a}) && !({b})", labels)


FRAGMENTS = (
    "has", "all", "(", ")", "()", "!", "&&", "||", "==", "!=", " in ", " not in ", "{", "}", ",",
    "'a'", '"b"', "'", '"', " ", "rack", "a/b", "-", ".", " contains ", " starts with ",
    " ends with ", "&", "|", "=", "in", "with",
)
selector_like_text = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=40), selector_like_text))
def test_any_text_parses_or_raises_selector_error(text: str) -> None:
    try:
        selector = parse(text)
    except SelectorError as error:
        assert error.selector == text
        assert 0 <= error.position <= len(text)
    else:
        assert parse(str(selector)) == selector
