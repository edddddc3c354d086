"""Calico's label selector language: parse a selector once, then test label sets against it.

Resource validation (`percale.api.fields`) parses every selector a user applies so a typo is
rejected up front, with the position of the mistake. Peering and IPAM use the same parsed form
later to pick the nodes a BGPPeer or an IPPool's nodeSelector applies to.

The language, loosest binding first::

    a || b        either side matches
    a && b        both sides match
    !a            a does not match
    ( a )         grouping
    all()         every label set
    has(k)        label k is present
    k == "v"      k is present and equal to v          k != "v"   absent or different
    k in {"v"}    k is present and one of the set      k not in {"v"}   absent or none of them
    k contains "s", k starts with "s", k ends with "s"   (false when k is absent)

Strings take single or double quotes and have no escapes. Keys are Kubernetes label keys. An
empty selector means all(). Calico's global() is refused with its reason (see _primary).

`str(selector)` is the canonical form: one space around binary operators and comparisons, none
after `!`, strings in double quotes unless the value holds a double quote (then single quotes),
set members sorted and deduplicated as `{"a", "b"}`, and parentheses only where precedence needs
them. `a && (b && c)` and `(a && b) && c` parse to the same flat conjunction, so the canonical form
of either is `a && b && c`.
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

__all__ = ["MAX_NESTING", "Selector", "SelectorError", "matches", "parse"]

# Parsing recurses once per '(' or '!', and so do matching and printing; a cap far below Python's
# recursion limit keeps absurd input a SelectorError instead of a RecursionError.
MAX_NESTING = 100

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# Wider than a label key on purpose: "-rack" or "a/b/c" should read as one bad key, not as a
# stray character somewhere inside it.
_WORD = re.compile(r"[A-Za-z0-9_./-]+")
_WHITESPACE = re.compile(r"\s*")
_SYMBOLS = ("&&", "||", "==", "!=", "!", "(", ")", "{", "}", ",")


class SelectorError(ValueError):
    """A selector does not parse; `position` is the 0-based index in `selector` of the mistake."""

    def __init__(self, selector: str, position: int, reason: str) -> None:
        # Passing the fields (not a message) keeps the exception picklable.
        super().__init__(selector, position, reason)
        self.selector = selector
        self.position = position
        self.reason = reason

    def __str__(self) -> str:
        return f'invalid selector "{self.selector}": {self.reason} at position {self.position}'


class Selector(abc.ABC):
    """A parsed selector. Equal selectors have the same structure and the same canonical text."""

    @abc.abstractmethod
    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a resource with these labels is selected."""

    @abc.abstractmethod
    def __str__(self) -> str: ...

    def __repr__(self) -> str:
        return f"<Selector {str(self)!r}>"


def _quoted(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


# Each node's repr comes from Selector, so tracebacks and test diffs show selector text.
_node = dataclass(frozen=True, repr=False)


@_node
class _All(Selector):
    def matches(self, labels: Mapping[str, str]) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@_node
class _Has(Selector):
    key: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@_node
class _Equals(Selector):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) == self.value

    def __str__(self) -> str:
        return f"{self.key} == {_quoted(self.value)}"


@_node
class _NotEquals(Selector):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) != self.value

    def __str__(self) -> str:
        return f"{self.key} != {_quoted(self.value)}"


def _set_text(values: frozenset[str]) -> str:
    return "{" + ", ".join(_quoted(value) for value in sorted(values)) + "}"


@_node
class _In(Selector):
    key: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) in self.values

    def __str__(self) -> str:
        return f"{self.key} in {_set_text(self.values)}"


@_node
class _NotIn(Selector):
    key: str
    values: frozenset[str]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return labels.get(self.key) not in self.values

    def __str__(self) -> str:
        return f"{self.key} not in {_set_text(self.values)}"


@_node
class _Contains(Selector):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        return actual is not None and self.value in actual

    def __str__(self) -> str:
        return f"{self.key} contains {_quoted(self.value)}"


@_node
class _StartsWith(Selector):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        return actual is not None and actual.startswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} starts with {_quoted(self.value)}"


@_node
class _EndsWith(Selector):
    key: str
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.key)
        return actual is not None and actual.endswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} ends with {_quoted(self.value)}"


@_node
class _Not(Selector):
    operand: Selector

    def matches(self, labels: Mapping[str, str]) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        if isinstance(self.operand, (_And, _Or)):
            return f"!({self.operand})"
        return f"!{self.operand}"


@_node
class _And(Selector):
    # Always two or more, and never an _And itself: the parser flattens nested conjunctions.
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(operand.matches(labels) for operand in self.operands)

    def __str__(self) -> str:
        return " && ".join(
            f"({operand})" if isinstance(operand, _Or) else str(operand)
            for operand in self.operands
        )


@_node
class _Or(Selector):
    # Always two or more, and never an _Or itself: the parser flattens nested disjunctions.
    operands: tuple[Selector, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return any(operand.matches(labels) for operand in self.operands)

    def __str__(self) -> str:
        return " || ".join(str(operand) for operand in self.operands)


_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def label_value_problem(value: str) -> str | None:
    """Why `value` is not a Kubernetes label value, or None when it is one."""
    if len(value) > 63:
        return f"label value {value!r} is longer than 63 characters"
    if not _LABEL_VALUE.fullmatch(value):
        return (f"label value {value!r} is not valid: a value is empty, or starts and ends with a "
                "letter or digit, with only letters, digits, '-', '_' and '.' between")
    return None


def labels_problem(labels: Mapping[str, str]) -> str | None:
    """Why `labels` is not a map of Kubernetes labels (the first key or value that is not), or
    None when it is one."""
    for key, value in labels.items():
        if problem := label_key_problem(key):
            return problem
        if problem := label_value_problem(value):
            return f"{problem} (label {key!r})"
    return None


def label_key_problem(key: str, what: str = "label key") -> str | None:
    """Why `key` is not a Kubernetes label key (an optional DNS-subdomain prefix and '/', then a
    name), or None when it is one. Annotation keys follow the same rule (`what` names which)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return f"{what} {key!r} has a prefix that is not a DNS subdomain"
    if len(name) > 63:
        return f"{what} {key!r} has a name longer than 63 characters"
    if not _LABEL_NAME.fullmatch(name):
        return (
            f"{what} {key!r} is not valid: a name starts and ends with a letter or digit, "
            "with only letters, digits, '-', '_' and '.' between"
        )
    return None


class _Token(NamedTuple):
    # A symbol such as "&&" or "(", else "word", "string" or "end".
    kind: str
    # The symbol, the word, or a string's content without its quotes.
    text: str
    position: int


_END = "end"
_WORD_KIND = "word"
_STRING = "string"
_OPERAND_EXPECTED = "expected a label key, has(), all(), '!' or '('"
_OPERATOR_EXPECTED = "expected an operator: ==, !=, in, not in, contains, starts with or ends with"


class _Parser:
    """Recursive descent over tokens lexed on demand, so the leftmost mistake is reported."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._cursor = 0
        self._tokens: list[_Token] = []
        self._index = 0
        self._nesting = 0

    def parse(self) -> Selector:
        if self._peek().kind == _END:
            return _All()
        selector = self._disjunction()
        if self._peek().kind != _END:
            self._fail("expected '&&', '||' or the end of the selector")
        return selector

    # -- tokens

    def _lex(self) -> _Token:
        text = self._text
        start = _WHITESPACE.match(text, self._cursor).end()
        if start == len(text):
            self._cursor = start
            return _Token(_END, "", start)
        char = text[start]
        if char in "'\"":
            close = text.find(char, start + 1)
            if close < 0:
                raise SelectorError(text, start, "unterminated string")
            self._cursor = close + 1
            return _Token(_STRING, text[start + 1 : close], start)
        if word := _WORD.match(text, start):
            self._cursor = word.end()
            return _Token(_WORD_KIND, word.group(), start)
        for symbol in _SYMBOLS:
            if text.startswith(symbol, start):
                self._cursor = start + len(symbol)
                return _Token(symbol, symbol, start)
        raise SelectorError(text, start, f"unexpected character {char!r}")

    def _peek(self, ahead: int = 0) -> _Token:
        while len(self._tokens) <= self._index + ahead:
            self._tokens.append(self._lex())
        return self._tokens[self._index + ahead]

    def _next(self) -> _Token:
        token = self._peek()
        self._index += 1
        return token

    def _accept(self, kind: str, text: str | None = None) -> _Token | None:
        token = self._peek()
        if token.kind == kind and (text is None or token.text == text):
            self._index += 1
            return token
        return None

    def _expect(self, kind: str, reason: str) -> _Token:
        token = self._accept(kind)
        if token is None:
            self._fail(reason)
        return token

    def _fail(self, reason: str) -> NoReturn:
        raise SelectorError(self._text, self._peek().position, reason)

    def _enter_nesting(self) -> None:
        if self._nesting == MAX_NESTING:
            self._fail(f"nesting deeper than {MAX_NESTING} levels")
        self._nesting += 1

    # -- grammar

    def _disjunction(self) -> Selector:
        operands = [self._conjunction()]
        while self._accept("||"):
            operands.append(self._conjunction())
        return _joined(_Or, operands)

    def _conjunction(self) -> Selector:
        operands = [self._unary()]
        while self._accept("&&"):
            operands.append(self._unary())
        return _joined(_And, operands)

    def _unary(self) -> Selector:
        if self._peek().kind == "!":
            self._enter_nesting()
            self._next()
            negated = _Not(self._unary())
            self._nesting -= 1
            return negated
        return self._primary()

    def _primary(self) -> Selector:
        token = self._peek()
        if token.kind == "(":
            self._enter_nesting()
            self._next()
            inner = self._disjunction()
            self._expect(")", "expected '&&', '||' or ')'")
            self._nesting -= 1
            return inner
        if token.kind != _WORD_KIND:
            self._fail(_OPERAND_EXPECTED)
        # "has" and "all" are only functions when a '(' follows; otherwise they are label keys.
        if token.text == "global" and self._peek(1).kind == "(":
            # Calico's namespaceSelector: global() picks what lives outside namespaces: host
            # endpoints and global network sets. percale has neither, so a rule meant for them
            # is refused rather than left to match nothing.
            self._fail("global() selects host endpoints and global network sets, which "
                       "percale does not have")
        if token.text in ("has", "all") and self._peek(1).kind == "(":
            self._next()
            self._next()
            selector: Selector = _Has(self._key()) if token.text == "has" else _All()
            self._expect(")", "expected ')'")
            return selector
        return self._comparison(self._key())

    def _key(self) -> str:
        token = self._expect(_WORD_KIND, "expected a label key")
        if problem := label_key_problem(token.text):
            raise SelectorError(self._text, token.position, problem)
        return token.text

    def _comparison(self, key: str) -> Selector:
        if self._accept("=="):
            return _Equals(key, self._string())
        if self._accept("!="):
            return _NotEquals(key, self._string())
        if self._accept(_WORD_KIND, "in"):
            return _In(key, self._set())
        if self._accept(_WORD_KIND, "not"):
            self._expect_word("in")
            return _NotIn(key, self._set())
        if self._accept(_WORD_KIND, "contains"):
            return _Contains(key, self._string())
        if self._accept(_WORD_KIND, "starts"):
            self._expect_word("with")
            return _StartsWith(key, self._string())
        if self._accept(_WORD_KIND, "ends"):
            self._expect_word("with")
            return _EndsWith(key, self._string())
        self._fail(_OPERATOR_EXPECTED)

    def _expect_word(self, word: str) -> None:
        if not self._accept(_WORD_KIND, word):
            self._fail(f"expected '{word}'")

    def _string(self) -> str:
        return self._expect(_STRING, "expected a quoted string").text

    def _set(self) -> frozenset[str]:
        self._expect("{", "expected '{'")
        values: list[str] = []
        if not self._accept("}"):
            values.append(self._string())
            while not self._accept("}"):
                self._expect(",", "expected ',' or '}'")
                values.append(self._string())
        return frozenset(values)


def _joined(kind: type[_And] | type[_Or], operands: list[Selector]) -> Selector:
    if len(operands) == 1:
        return operands[0]
    # (a && b) && c means the same as a && b && c; one flat shape keeps equality and str canonical.
    flat: list[Selector] = []
    for operand in operands:
        flat.extend(operand.operands if isinstance(operand, kind) else (operand,))
    return kind(tuple(flat))


@functools.lru_cache(maxsize=1024)
def parse(text: str) -> Selector:
    """Parse selector text; raise SelectorError naming the position of the first mistake.

    Results are cached: the same few selectors are evaluated against every node, over and over.
    """
    return _Parser(text).parse()


def matches(text: str, labels: Mapping[str, str]) -> bool:
    """Whether the selector `text` selects a resource with these labels."""
    return parse(text).matches(labels)
