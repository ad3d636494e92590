"""Which names of the record a JSONata expression reads: the roots of its paths.

jsonatapy compiles an expression but shows no parse tree, so this module parses the language
itself (a Pratt parser like jsonata-js's) far enough to tell, for every name in an expression,
whether it is read from the record. A name is read from the record when it is evaluated in the
record's context: the first step of a path (``vlaue`` in ``vlaue.id``), inside objects, arrays,
function arguments, conditions and blocks, and in a lambda's body (a lambda sees the context it
was defined in). It is not when it comes after a ``.`` (a later step), inside a predicate
``[…]``, a group-by ``{…}``, a sort ``^(…)`` or a transform ``| … |`` (those see another
context), nor when it is a ``$variable``, a ``$function()``, a string or a keyword.

:func:`record_reads` raises :class:`ValueError` for text it cannot parse; jsonatapy has compiled
it by then, so the caller then skips the check rather than report a false alarm.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SINGLE = frozenset(".[]{}(),@#;:?+-*/%|=<>^&!~")
_DOUBLE = frozenset({"..", ":=", "!=", ">=", "<=", "**", "~>", "?:", "??"})
_WORDS = frozenset({"and", "or", "in"})
_VALUES = frozenset({"true", "false", "null"})
_NUMBER = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([Ee][-+]?[0-9]+)?")
_SPACE = " \t\n\r\v\f"
# Binding powers of infix operators, as in jsonata-js; every other token ends an expression.
_LBP = {
    ".": 75,
    "[": 80,
    "{": 70,
    "(": 80,
    "@": 80,
    "#": 80,
    "?": 20,
    "+": 50,
    "-": 50,
    "*": 60,
    "/": 60,
    "%": 60,
    "=": 40,
    "<": 40,
    ">": 40,
    "^": 40,
    ":=": 10,
    "!=": 40,
    "<=": 40,
    ">=": 40,
    "~>": 40,
    "?:": 40,
    "??": 40,
    "and": 30,
    "or": 25,
    "in": 40,
    "&": 50,
}
# Tokens after which a "/" divides; anywhere else it starts a regex.
_OPERAND_ENDS = frozenset({"name", "var", "str", "num", "value", "regex"})
_OPERAND_CLOSERS = frozenset({")", "]", "}", "*", "**", "%"})


@dataclass(frozen=True)
class Read:
    """A name an expression reads from the record."""

    name: str
    position: int
    """Offset of the name in the expression."""
    key: str | None = None
    """The object key whose value reads it, e.g. ``id`` in ``{"id": vlaue.id}`` (nested keys
    joined with ``.``)."""
    as_key: bool = False
    """The name is an object key itself (``{id: …}``), which JSONata evaluates as a path."""


@dataclass(frozen=True)
class _Token:
    kind: str  # name, var, str, num, value, regex, op or end
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, length = 0, len(text)

    def operand_before() -> bool:
        if not tokens:
            return False
        last = tokens[-1]
        return last.kind in _OPERAND_ENDS or (last.kind == "op" and last.text in _OPERAND_CLOSERS)

    while i < length:
        char = text[i]
        if char in _SPACE:
            i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unclosed comment")
            i = end + 2
        elif char == "/" and not operand_before():
            j = i + 1
            while j < length and text[j] != "/":
                j += 2 if text[j] == "\\" else 1
            if j >= length:
                raise ValueError("unclosed regex")
            j += 1
            while j < length and text[j].isalpha():
                j += 1
            tokens.append(_Token("regex", text[i:j], i))
            i = j
        elif text[i : i + 2] in _DOUBLE:
            tokens.append(_Token("op", text[i : i + 2], i))
            i += 2
        elif char in _SINGLE:
            tokens.append(_Token("op", char, i))
            i += 1
        elif char in "\"'":
            j = i + 1
            while j < length and text[j] != char:
                j += 2 if text[j] == "\\" else 1
            if j >= length:
                raise ValueError("unclosed string")
            tokens.append(_Token("str", text[i + 1 : j], i))
            i = j + 1
        elif char == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise ValueError("unclosed name")
            tokens.append(_Token("name", text[i + 1 : j], i))
            i = j + 1
        elif (number := _NUMBER.match(text, i)) is not None:
            tokens.append(_Token("num", number.group(), i))
            i = number.end()
        else:
            j = i + 1 if char == "$" else i
            while j < length and text[j] not in _SPACE and text[j] not in _SINGLE:
                j += 1
            word = text[i:j]
            if char == "$":
                kind = "var"
            elif word in _WORDS:
                kind = "op"
            elif word in _VALUES:
                kind = "value"
            else:
                kind = "name"
            tokens.append(_Token(kind, word, i))
            i = j
    tokens.append(_Token("end", "", length))
    return tokens


@dataclass
class _Node:
    """A piece of the parse tree: only what decides which context each name is evaluated in."""

    name: str | None = None
    position: int = 0
    same: list[_Node] = field(default_factory=list)
    """Parts evaluated in this node's own context."""
    pairs: list[tuple[_Node, _Node]] = field(default_factory=list)
    """Key and value of an object constructor, in this node's context."""
    key_text: str | None = None
    """For a string literal: its text (an object key written as a string)."""
    # Parts evaluated in another context (later path steps, predicates, ...) are dropped.


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind == "op" and token.text == text

    def expect(self, text: str) -> None:
        token = self.next()
        if token.kind != "op" or token.text != text:
            raise ValueError(f"expected {text!r} at {token.position}")

    def parse(self) -> _Node:
        node = self.expression(0)
        if self.peek().kind != "end":
            raise ValueError(f"unexpected {self.peek().text!r} at {self.peek().position}")
        return node

    def expression(self, rbp: int) -> _Node:
        left = self.nud(self.next())
        while True:
            token = self.peek()
            lbp = _LBP.get(token.text, 0) if token.kind == "op" else 0
            if rbp >= lbp:
                return left
            self.next()
            left = self.led(token, left)

    def sequence(self, close: str, separator: str = ",") -> list[_Node]:
        items: list[_Node] = []
        while not self.at(close):
            items.append(self.expression(0))
            if not self.at(separator):
                break
            self.next()
        self.expect(close)
        return items

    def nud(self, token: _Token) -> _Node:
        if token.kind == "name" or (token.kind == "op" and token.text in _WORDS):
            return _Node(name=token.text, position=token.position)
        if token.kind == "str":
            return _Node(key_text=token.text)
        if token.kind in ("var", "num", "value", "regex"):
            return _Node()
        if token.kind != "op":
            raise ValueError(f"unexpected end at {token.position}")
        match token.text:
            case "-":
                return _Node(same=[self.expression(70)])
            case "*" | "**" | "%" | "?":  # wildcard, descendants, parent, placeholder
                return _Node()
            case "(":
                return _Node(same=self.sequence(")", ";"))
            case "[":
                items: list[_Node] = []
                while not self.at("]"):
                    items.append(self.expression(0))
                    if self.at(".."):
                        self.next()
                        items.append(self.expression(0))
                    if not self.at(","):
                        break
                    self.next()
                self.expect("]")
                return _Node(same=items)
            case "{":
                return _Node(pairs=self.pairs())
            case "|":  # transform: its pattern and update see the matched objects
                self.expression(0)
                self.expect("|")
                self.expression(0)
                if self.at(","):
                    self.next()
                    self.expression(0)
                self.expect("|")
                return _Node()
        raise ValueError(f"unexpected {token.text!r} at {token.position}")

    def pairs(self) -> list[tuple[_Node, _Node]]:
        pairs: list[tuple[_Node, _Node]] = []
        while not self.at("}"):
            key = self.expression(0)
            self.expect(":")
            pairs.append((key, self.expression(0)))
            if not self.at(","):
                break
            self.next()
        self.expect("}")
        return pairs

    def led(self, token: _Token, left: _Node) -> _Node:
        match token.text:
            case ".":
                self.expression(75)  # a later step: the context is the left side's result
                return _Node(same=[left])
            case "[":
                if not self.at("]"):
                    self.expression(0)  # a predicate: the context is each item
                self.expect("]")
                return _Node(same=[left])
            case "{":
                self.pairs()  # group-by: the context is each item
                return _Node(same=[left])
            case "^":
                self.expect("(")
                while True:
                    if self.at("<") or self.at(">"):
                        self.next()
                    self.expression(0)  # a sort term: the context is each item
                    if not self.at(","):
                        break
                    self.next()
                self.expect(")")
                return _Node(same=[left])
            case "(":
                if left.name in ("function", "λ") and not left.same:
                    return self.lambda_()
                return _Node(same=[left, *self.sequence(")")])
            case "?":
                parts = [left, self.expression(0)]
                if self.at(":"):
                    self.next()
                    parts.append(self.expression(0))
                return _Node(same=parts)
            case ":=":
                return _Node(same=[left, self.expression(_LBP[":="] - 1)])
        return _Node(same=[left, self.expression(_LBP[token.text])])

    def lambda_(self) -> _Node:
        self.sequence(")")  # the parameters: $variables
        if self.at("<"):  # a signature, e.g. <n-n:n>
            depth = 0
            while True:
                token = self.next()
                if token.kind == "end":
                    raise ValueError("unclosed signature")
                if token.kind == "op" and token.text == "<":
                    depth += 1
                elif token.kind == "op" and token.text == ">":
                    depth -= 1
                    if depth == 0:
                        break
        self.expect("{")
        body = self.expression(0)
        self.expect("}")
        return _Node(same=[body])  # a lambda's body sees the context it is defined in


def record_reads(text: str) -> list[Read]:
    """The names ``text`` reads from the record (its input), in order; ValueError if unparsable."""
    found: list[Read] = []

    def visit(node: _Node, key: str | None) -> None:
        if node.name is not None:
            found.append(Read(node.name, node.position, key))
        for part in node.same:
            visit(part, key)
        for key_node, value in node.pairs:
            if key_node.name is not None and not key_node.same:
                found.append(Read(key_node.name, key_node.position, key, as_key=True))
            else:
                visit(key_node, key)
            inner = key_node.key_text
            visit(value, key if inner is None else inner if key is None else f"{key}.{inner}")

    visit(_Parser(text).parse(), None)
    return found
