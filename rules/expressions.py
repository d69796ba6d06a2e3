"""The rule expression language: conditions, targets and amounts of reward rules (SPEC §6).

An expression is compiled once (``compile_expression``, memoised by source text) and evaluated per
event against an ``EvaluationContext``. Compilation parses the source with Python's ``ast`` in
``eval`` mode and validates the tree against a whitelist, so every error of the *language* (unknown
name, forbidden construct, ``_private`` path segment, wrong number of arguments, too long / too deep)
is an ``ExpressionError`` raised when an admin saves the rule. Evaluation can only raise
``EvaluationError`` (division by zero, arithmetic on null or on a string, a number out of range…);
the caller marks the event failed. Exceptions raised by the caller's own ``profile`` / ``upline``
callables (a database error, say) are not expression errors and propagate unchanged.

Language
--------
Names: ``event_type``, ``actor``, ``primary_subject``, ``context`` and dotted paths into it
(``context.a.b``), ``actor_profile.<attr>`` / ``subject_profile.<attr>`` with ``<attr>`` one of
``tier``, ``is_vip``, ``is_pro``, ``sponsor``. Literals: strings, ints, floats, ``true``/``false``/
``null`` (and ``True``/``False``/``None``). Operators: ``== != < <= > >= in not in and or not``,
``+ - * / // %``, unary minus, parentheses. Functions: ``upline(user, n)``, ``floor(x)``,
``round(x[, digits])``, ``min(...)``, ``max(...)``, ``abs(x)``, ``len(x)``. Nothing else: no
subscripts (use dotted paths), no other attributes, calls, names, lambdas, comprehensions,
f-strings, ``**``, bit operators, conditional expressions, list/dict literals, walrus, keyword or
starred arguments. A path segment must be a Python identifier not starting with ``_``.

Semantics
---------
* A missing path, or a path through something that is not an object (dict), is ``null``.
  Attributes of an unknown profile (the lookup returned None, or ``primary_subject`` is null) read
  as ``null`` (``tier``, ``sponsor``) or ``false`` (``is_vip``, ``is_pro``).
* ``a == b`` is JSON value equality (``1 == 1.0``; a boolean never equals a number), so
  ``x == null`` is true only when ``x`` is null; ``!=`` is its exact negation (``x != null`` is true
  whenever ``x`` is not null).
* ``< <= > >=`` involving null are false. Otherwise both sides must be numbers or both strings;
  anything else (``"a" < 1``, a boolean, a list) is an ``EvaluationError``.
* ``x in y``: null ``y`` → false; string ``y`` → substring test (``x`` must be a string); list ``y``
  → membership; object ``y`` → key test. Any other ``y`` is an ``EvaluationError``. ``x not in y``
  is the exact negation of ``x in y`` (so ``x not in null`` is true).
* ``and``/``or``/``not`` use truthiness (null, false, 0, "" and empty lists/objects are false) and,
  as in Python, ``a or b`` / ``a and b`` return an operand: ``context.bonus or 0`` is a default.
* Arithmetic needs numbers (booleans are not numbers); ``+`` also joins two strings (result at
  most ``MAX_STRING_RESULT`` characters). Null or string operands, division/modulo by zero and any
  numeric result whose absolute value exceeds ``MAX_NUMBER`` (or is NaN) are ``EvaluationError``.
  ``/`` is true division (``5 / 2 == 2.5``); ``floor`` and ``//`` round towards minus infinity.
* ``round`` rounds halves to even, as Python does (``round(2.5) == 2``); with one argument it gives
  an integer.
* ``len`` accepts strings, lists and objects; ``floor``/``round``/``abs`` numbers; ``min``/``max``
  two or more numbers (or strings), or one non-empty list of them. ``upline(user, n)``: ``n`` must be
  an integer 1..10 (else ``EvaluationError``); a non-string ``user`` (e.g. null) gives null.

Bounds: source at most ``MAX_SOURCE_LENGTH`` characters, at most ``MAX_NODES`` syntax-tree nodes,
``MAX_DEPTH`` levels and ``MAX_PARENTHESES`` nested brackets (deep nesting is refused at compile time, never a RecursionError), number
literals within ``MAX_NUMBER``. With no loops and bounded values, evaluation is linear in the size
of the expression.

Implementation
--------------
The source is parsed with Python's ``ast`` and validated against the whitelist above; after
validation each dotted path is replaced by a ``_Path`` node holding its root and keys, and the
literal names become constants. What is left has six kinds of node (constant, unary, binary, boolean
and comparison operators, calls of the listed functions, paths), which ``_Evaluator`` walks with the
null-aware, type-checked, bounded operator table below. Evaluation never calls ``getattr`` on data
and never sees an unvalidated node; the compiled tree is never mutated, so one ``Expression`` is
safe to share between threads. (A general evaluator such as simpleeval would bring nothing this
walk needs and needs its internals overridden to keep to these semantics.)
"""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import tokenize
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_SOURCE_LENGTH = 1000
MAX_NODES = 500
MAX_DEPTH = 64
MAX_PARENTHESES = 32
MAX_NUMBER = 10**15
MAX_STRING_RESULT = 10_000
MAX_AMOUNT = 10**12
MAX_UPLINE_LEVEL = 10
MAX_ROUND_DIGITS = 15


class ExpressionError(ValueError):
    """The expression is not valid in the rule language (reported when the rule is saved)."""


class EvaluationError(Exception):
    """The expression could not be evaluated for this event."""


@dataclass(frozen=True)
class ProfileView:
    """What a rule may read about a user."""

    user_id: str
    tier: str | None = None
    is_vip: bool = False
    is_pro: bool = False
    sponsor: str | None = None


@dataclass(frozen=True)
class EvaluationContext:
    event_type: str
    actor: str
    primary_subject: str | None
    context: dict
    profile: Callable[[str], ProfileView | None]
    upline: Callable[[str, int], str | None]


# --------------------------------------------------------------------------------------------------
# Vocabulary

EVENT_NAMES = frozenset({"event_type", "actor", "primary_subject", "context"})
PROFILE_NAMES = frozenset({"actor_profile", "subject_profile"})
PROFILE_ATTRIBUTES = {"tier": None, "is_vip": False, "is_pro": False, "sponsor": None}
LITERAL_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
# name -> (min args, max args or None for unbounded)
FUNCTION_ARITY = {
    "upline": (2, 2),
    "floor": (1, 1),
    "round": (1, 2),
    "min": (1, None),
    "max": (1, None),
    "abs": (1, 1),
    "len": (1, 1),
}

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn)

_REFUSED = {
    ast.Subscript: "subscripts are not allowed; use dotted paths such as context.a.b",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed",
    ast.List: "list literals are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Dict: "object literals are not allowed",
    ast.Set: "set literals are not allowed",
    ast.Starred: "starred arguments are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Slice: "slices are not allowed",
}


class _Path(ast.expr):
    """A validated dotted path: ``root`` is a name of EVENT_NAMES/PROFILE_NAMES, ``keys`` a tuple."""

    _fields = ("root", "keys")


# --------------------------------------------------------------------------------------------------
# Compilation


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Validator:
    def __init__(self) -> None:
        self.uses_upline = False

    def check(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.Attribute):
            return self._attribute(node)
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINOPS):
                raise ExpressionError(f"operator {_op_text(node.op)} is not allowed")
            return ast.BinOp(left=self.check(node.left), op=node.op, right=self.check(node.right))
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.Not):
                raise ExpressionError(f"unary operator {_op_text(node.op)} is not allowed")
            return ast.UnaryOp(op=node.op, operand=self.check(node.operand))
        if isinstance(node, ast.BoolOp):
            return ast.BoolOp(op=node.op, values=[self.check(v) for v in node.values])
        if isinstance(node, ast.Compare):
            for op in node.ops:
                if isinstance(op, ast.Is | ast.IsNot):
                    raise ExpressionError("'is' is not allowed; use == null or != null")
                if not isinstance(op, _CMPOPS):
                    raise ExpressionError(f"comparison {_op_text(op)} is not allowed")
            return ast.Compare(
                left=self.check(node.left), ops=list(node.ops), comparators=[self.check(c) for c in node.comparators]
            )
        if isinstance(node, ast.Call):
            return self._call(node)
        message = _REFUSED.get(type(node))
        if message is None:
            message = f"{type(node).__name__} is not allowed in a rule expression"
        raise ExpressionError(message)

    @staticmethod
    def _constant(node: ast.Constant) -> ast.AST:
        value = node.value
        if value is None or isinstance(value, bool):
            return ast.Constant(value=value)
        if isinstance(value, int):
            if abs(value) > MAX_NUMBER:
                raise ExpressionError(f"number {value} is out of range (at most {MAX_NUMBER:.0e} in absolute value)")
            return ast.Constant(value=value)
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_NUMBER:
                raise ExpressionError(f"number {value!r} is out of range")
            return ast.Constant(value=value)
        if isinstance(value, str):
            if len(value) > MAX_STRING_RESULT:
                raise ExpressionError("string literal is too long")
            return ast.Constant(value=value)
        raise ExpressionError(f"{type(value).__name__} literals are not allowed")

    @staticmethod
    def _name(node: ast.Name) -> ast.AST:
        name = node.id
        if name in LITERAL_NAMES:
            return ast.Constant(value=LITERAL_NAMES[name])
        if name in EVENT_NAMES:
            return _Path(root=name, keys=())
        if name in PROFILE_NAMES:
            raise ExpressionError(f"use {name}.tier, {name}.is_vip, {name}.is_pro or {name}.sponsor")
        if name in FUNCTION_ARITY:
            raise ExpressionError(f"{name} is a function: call it, e.g. {name}(...)")
        allowed = ", ".join(sorted(EVENT_NAMES | PROFILE_NAMES))
        raise ExpressionError(f"unknown name '{name}' (allowed: {allowed})")

    @staticmethod
    def _attribute(node: ast.Attribute) -> ast.AST:
        keys: list[str] = []
        current: ast.AST = node
        while isinstance(current, ast.Attribute):
            keys.append(current.attr)
            current = current.value
        keys.reverse()
        if not isinstance(current, ast.Name) or current.id not in EVENT_NAMES | PROFILE_NAMES:
            raise ExpressionError("attributes can only be read from context, actor_profile and subject_profile")
        root = current.id
        if root in PROFILE_NAMES:
            if len(keys) != 1 or keys[0] not in PROFILE_ATTRIBUTES:
                allowed = ", ".join(PROFILE_ATTRIBUTES)
                raise ExpressionError(f"{root} has only the attributes {allowed}")
            return _Path(root=root, keys=tuple(keys))
        if root != "context":
            raise ExpressionError(f"{root} has no attributes; only context can be followed with a dotted path")
        for key in keys:
            if key.startswith("_"):
                raise ExpressionError(f"path segment '{key}' is not allowed (segments may not start with '_')")
        return _Path(root=root, keys=tuple(keys))

    def _call(self, node: ast.Call) -> ast.AST:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTION_ARITY:
            if isinstance(node.func, ast.Name):
                allowed = ", ".join(FUNCTION_ARITY)
                raise ExpressionError(f"unknown function '{node.func.id}' (allowed: {allowed})")
            raise ExpressionError("only the functions upline, floor, round, min, max, abs and len can be called")
        name = node.func.id
        if node.keywords:
            raise ExpressionError(f"{name}() does not take keyword arguments")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError("starred arguments are not allowed")
        low, high = FUNCTION_ARITY[name]
        count = len(node.args)
        if count < low or (high is not None and count > high):
            expected = str(low) if low == high else (f"{low} or {high}" if high else f"at least {low}")
            raise ExpressionError(f"{name}() takes {expected} argument(s), got {count}")
        if name == "upline":
            self.uses_upline = True
        return ast.Call(func=ast.Name(id=name, ctx=ast.Load()), args=[self.check(a) for a in node.args], keywords=[])


def _op_text(op: ast.AST) -> str:
    return {
        ast.Pow: "**",
        ast.BitAnd: "&",
        ast.BitOr: "|",
        ast.BitXor: "^",
        ast.LShift: "<<",
        ast.RShift: ">>",
        ast.MatMult: "@",
        ast.Invert: "~",
        ast.UAdd: "unary +",
    }.get(type(op), type(op).__name__)


def _check_size(tree: ast.AST) -> None:
    """Refuse too many nodes or too deep a tree, iteratively (no recursion on hostile input)."""
    count = 0
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExpressionError(f"expression is too large (more than {MAX_NODES} syntax nodes)")
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth + 1))


_FILENAME = "<rule expression>"
# Python's parser warns about dubious literals such as "1if"; for rule text they are noise.
warnings.filterwarnings("ignore", category=SyntaxWarning, module=re.escape(_FILENAME))


def _check_parentheses(text: str) -> None:
    """Refuse absurd bracket nesting, which leaves no trace in the syntax tree."""
    depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.OP:
                if token.string in "([{":
                    depth += 1
                    if depth > MAX_PARENTHESES:
                        raise ExpressionError(f"parentheses are nested too deeply (more than {MAX_PARENTHESES})")
                elif token.string in ")]}":
                    depth -= 1
    except (tokenize.TokenError, SyntaxError):
        return  # malformed: ast.parse reports it with a better message


def _parse(source: str) -> tuple[ast.AST, bool]:
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(f"expression is too long ({len(source)} characters, at most {MAX_SOURCE_LENGTH})")
    text = source.strip()
    if not text:
        raise ExpressionError("expression is empty")
    _check_parentheses(text)
    try:
        # Wrapped in parentheses so that an expression may span several lines (as in a textarea).
        tree = ast.parse(f"(\n{text}\n)", filename=_FILENAME, mode="eval")
    except SyntaxError as exc:
        line = (exc.lineno or 1) - 1
        where = f" at line {line}, column {exc.offset}" if exc.offset and 1 <= line <= text.count("\n") + 1 else ""
        raise ExpressionError(f"syntax error{where}: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise ExpressionError(f"expression cannot be parsed: {exc}") from None
    _check_size(tree.body)
    validator = _Validator()
    body = validator.check(tree.body)
    return body, validator.uses_upline


# --------------------------------------------------------------------------------------------------
# Runtime operators (null-aware, type-checked, bounded)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(value: Any) -> Any:
    if isinstance(value, float):
        if value != value:  # NaN
            raise EvaluationError("result is not a number (NaN)")
        if abs(value) > MAX_NUMBER:
            raise EvaluationError(f"number out of range (absolute value above {MAX_NUMBER:.0e})")
    elif isinstance(value, int) and not isinstance(value, bool) and (value > MAX_NUMBER or value < -MAX_NUMBER):
        raise EvaluationError(f"number out of range (absolute value above {MAX_NUMBER:.0e})")
    return value


def _arith(symbol: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def op(a: Any, b: Any) -> Any:
        if not (_is_number(a) and _is_number(b)):
            raise EvaluationError(f"cannot compute {_type_name(a)} {symbol} {_type_name(b)}")
        try:
            return _bounded(fn(a, b))
        except ZeroDivisionError:
            raise EvaluationError("division by zero") from None
        except OverflowError:
            raise EvaluationError("number out of range") from None

    return op


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, str) and isinstance(b, str):
        if len(a) + len(b) > MAX_STRING_RESULT:
            raise EvaluationError(f"string result too long (more than {MAX_STRING_RESULT} characters)")
        return a + b
    if not (_is_number(a) and _is_number(b)):
        raise EvaluationError(f"cannot compute {_type_name(a)} + {_type_name(b)}")
    try:
        return _bounded(a + b)
    except OverflowError:
        raise EvaluationError("number out of range") from None


def _neg(a: Any) -> Any:
    if not _is_number(a):
        raise EvaluationError(f"cannot negate {_type_name(a)}")
    return _bounded(-a)


def _truthy(value: Any) -> bool:
    return bool(value)


def _not(a: Any) -> bool:
    return not _truthy(a)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _ordering(symbol: str, fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def op(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return fn(a, b)
        raise EvaluationError(f"cannot compare {_type_name(a)} {symbol} {_type_name(b)}")

    return op


def _in(item: Any, container: Any) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        if not isinstance(item, str):
            raise EvaluationError(f"cannot test {_type_name(item)} in string")
        return item in container
    if isinstance(container, list | tuple):
        return any(_eq(item, element) for element in container)
    if isinstance(container, dict):
        if item is None or isinstance(item, str | int | float):
            return item in container
        raise EvaluationError(f"cannot test {_type_name(item)} in object")
    raise EvaluationError(f"cannot test membership in {_type_name(container)}")


def _not_in(item: Any, container: Any) -> bool:
    return not _in(item, container)


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: _add,
    ast.Sub: _arith("-", lambda a, b: a - b),
    ast.Mult: _arith("*", lambda a, b: a * b),
    ast.Div: _arith("/", lambda a, b: a / b),
    ast.FloorDiv: _arith("//", lambda a, b: a // b),
    ast.Mod: _arith("%", lambda a, b: a % b),
    ast.USub: _neg,
    ast.Not: _not,
    ast.Eq: _eq,
    ast.NotEq: _ne,
    ast.Lt: _ordering("<", lambda a, b: a < b),
    ast.LtE: _ordering("<=", lambda a, b: a <= b),
    ast.Gt: _ordering(">", lambda a, b: a > b),
    ast.GtE: _ordering(">=", lambda a, b: a >= b),
    ast.In: _in,
    ast.NotIn: _not_in,
}


def _need_number(name: str, value: Any) -> Any:
    if not _is_number(value):
        raise EvaluationError(f"{name}() needs a number, got {_type_name(value)}")
    return value


def _fn_floor(x: Any) -> int:
    _need_number("floor", x)
    try:
        return _bounded(math.floor(x))
    except (OverflowError, ValueError):
        raise EvaluationError("floor() of a number out of range") from None


def _fn_round(x: Any, digits: Any = None) -> Any:
    _need_number("round", x)
    if digits is not None and (
        not isinstance(digits, int) or isinstance(digits, bool) or abs(digits) > MAX_ROUND_DIGITS
    ):
        raise EvaluationError(f"round() digits must be an integer between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    try:
        return _bounded(round(x) if digits is None else round(x, digits))
    except (OverflowError, ValueError):
        raise EvaluationError("round() of a number out of range") from None


def _extremum(name: str, pick: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any) -> Any:
        items = args
        if len(args) == 1:
            if not isinstance(args[0], list):
                raise EvaluationError(f"{name}() of a single argument needs a list, got {_type_name(args[0])}")
            items = tuple(args[0])
            if not items:
                raise EvaluationError(f"{name}() of an empty list")
        if all(_is_number(i) for i in items) or all(isinstance(i, str) for i in items):
            return pick(items)
        kinds = ", ".join(sorted({_type_name(i) for i in items}))
        raise EvaluationError(f"{name}() needs numbers or strings, got {kinds}")

    return fn


def _fn_abs(x: Any) -> Any:
    return _bounded(abs(_need_number("abs", x)))


def _fn_len(x: Any) -> int:
    if not isinstance(x, str | list | dict):
        raise EvaluationError(f"len() needs a string, list or object, got {_type_name(x)}")
    return len(x)


_PURE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "floor": _fn_floor,
    "round": _fn_round,
    "min": _extremum("min", min),
    "max": _extremum("max", max),
    "abs": _fn_abs,
    "len": _fn_len,
}


class _CallbackFailure(Exception):
    """Carries an exception raised by the caller's profile/upline callable through the evaluator."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


# --------------------------------------------------------------------------------------------------
# Evaluator


class _Evaluator:
    """Walks a validated, rewritten tree; one instance per evaluation (holds the context)."""

    def __init__(self, ctx: EvaluationContext) -> None:
        self.ctx = ctx
        self._profiles: dict[str, ProfileView | None] = {}
        self.nodes = {
            ast.Constant: self._eval_constant,
            ast.UnaryOp: self._eval_unaryop,
            ast.BinOp: self._eval_binop,
            ast.BoolOp: self._eval_boolop,
            ast.Compare: self._eval_compare,
            ast.Call: self._eval_call,
            _Path: self._eval_path,
        }

    def eval(self, node: ast.AST) -> Any:
        return self.nodes[type(node)](node)

    @staticmethod
    def _eval_constant(node: ast.Constant) -> Any:
        return node.value

    def _eval_unaryop(self, node: ast.UnaryOp) -> Any:
        return _OPERATORS[type(node.op)](self.eval(node.operand))

    def _eval_binop(self, node: ast.BinOp) -> Any:
        return _OPERATORS[type(node.op)](self.eval(node.left), self.eval(node.right))

    def _eval_boolop(self, node: ast.BoolOp) -> Any:
        # As Python's ``and``/``or``: the deciding operand itself, evaluated left to right.
        value: Any = False
        stop_when = not isinstance(node.op, ast.And)
        for operand in node.values:
            value = self.eval(operand)
            if bool(value) is stop_when:
                break
        return value

    def _eval_compare(self, node: ast.Compare) -> Any:
        # A chained comparison stops at the first false link, as in Python.
        right = self.eval(node.left)
        result: Any = True
        for operation, comparator in zip(node.ops, node.comparators, strict=True):
            left, right = right, self.eval(comparator)
            result = _OPERATORS[type(operation)](left, right)
            if not result:
                break
        return result

    def _eval_path(self, node: _Path) -> Any:
        ctx = self.ctx
        root = node.root
        if root == "context":
            value: Any = ctx.context
            for key in node.keys:
                if not isinstance(value, dict):
                    return None
                value = value.get(key)
            return value
        if root in PROFILE_NAMES:
            user = ctx.actor if root == "actor_profile" else ctx.primary_subject
            attr = node.keys[0]
            profile = self._profile(user)
            if profile is None:
                return PROFILE_ATTRIBUTES[attr]
            return getattr(profile, attr)
        return getattr(ctx, root)

    def _profile(self, user: Any) -> ProfileView | None:
        if not isinstance(user, str) or not user:
            return None
        if user not in self._profiles:
            try:
                self._profiles[user] = self.ctx.profile(user)
            except Exception as exc:
                raise _CallbackFailure(exc) from exc
        return self._profiles[user]

    def _eval_call(self, node: ast.Call) -> Any:
        name = node.func.id
        args = [self.eval(a) for a in node.args]
        if name == "upline":
            return self._upline(*args)
        return _PURE_FUNCTIONS[name](*args)

    def _upline(self, user: Any, n: Any) -> Any:
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_UPLINE_LEVEL:
            raise EvaluationError(f"upline() level must be an integer from 1 to {MAX_UPLINE_LEVEL}, got {n!r}")
        if not isinstance(user, str) or not user:
            return None
        try:
            return self.ctx.upline(user, n)
        except Exception as exc:
            raise _CallbackFailure(exc) from exc


@dataclass(frozen=True, eq=False)
class Expression:
    """A compiled expression: immutable, reusable across events and threads."""

    source: str
    uses_upline: bool
    _body: ast.AST = field(repr=False)

    def evaluate(self, ctx: EvaluationContext) -> Any:
        """Evaluate against one event; raises EvaluationError only (callback errors propagate as they are)."""
        try:
            result = _Evaluator(ctx).eval(self._body)
            return _bounded(result)
        except EvaluationError:
            raise
        except _CallbackFailure as failure:
            raise failure.original from None
        except RecursionError:
            raise EvaluationError("expression is too deeply nested to evaluate") from None
        except (ArithmeticError, TypeError, ValueError) as exc:
            # Safety net: the operators above check types themselves; anything left is still an
            # evaluation failure of this expression, never a crash of the caller.
            raise EvaluationError(f"cannot evaluate: {exc}") from None


@functools.lru_cache(maxsize=4096)
def _compile_cached(source: str) -> Expression:
    body, uses_upline = _parse(source)
    return Expression(source=source, uses_upline=uses_upline, _body=body)


def compile_expression(source: str) -> Expression:
    """Compile (memoised by source text); raises ExpressionError with a human message."""
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be a string, got {type(source).__name__}")
    return _compile_cached(source)


def validate_expression(source: str) -> None:
    """For model/form validators: empty (or blank, or None) is valid; otherwise it must compile."""
    if source is None or (isinstance(source, str) and not source.strip()):
        return
    compile_expression(source)


def _is_blank(source: str | None) -> bool:
    return source is None or (isinstance(source, str) and not source.strip())


def evaluate_condition(source: str, ctx: EvaluationContext) -> bool:
    """Empty → True; null → False; otherwise the truthiness of the result."""
    if _is_blank(source):
        return True
    result = compile_expression(source).evaluate(ctx)
    if result is None:
        return False
    return bool(result)


MAX_USER_ID_LENGTH = 100  # user ids are 1..100 characters everywhere (SPEC §5, §9)


def evaluate_target(source: str, ctx: EvaluationContext) -> str | None:
    """A user id: empty source, null or "" → None; a string as is; an integer as its decimal text."""
    if _is_blank(source):
        return None
    result = compile_expression(source).evaluate(ctx)
    if result is None or result == "":
        return None
    if isinstance(result, int) and not isinstance(result, bool):
        result = str(result)
    if not isinstance(result, str):
        raise EvaluationError(f"target must be a user id (string), got {_type_name(result)}")
    if len(result) > MAX_USER_ID_LENGTH or "\x00" in result:
        raise EvaluationError(f"target is not a valid user id (at most {MAX_USER_ID_LENGTH} characters, no NUL)")
    return result


def evaluate_amount(source: str, ctx: EvaluationContext) -> int:
    """An integer amount: numbers are floored (fractions round down); anything else is an error."""
    if _is_blank(source):
        raise EvaluationError("amount expression is empty")
    result = compile_expression(source).evaluate(ctx)
    if not _is_number(result):
        raise EvaluationError(f"amount must be a number, got {_type_name(result)}")
    if isinstance(result, float):
        if not math.isfinite(result):
            raise EvaluationError("amount is not a finite number")
        result = math.floor(result)
    if abs(result) > MAX_AMOUNT:
        raise EvaluationError(f"amount {result} is out of range (at most {MAX_AMOUNT:.0e} in absolute value)")
    return result
