"""Unit tests of the rule expression language (no database)."""

import math
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.expressions import (
    MAX_SOURCE_LENGTH,
    EvaluationContext,
    EvaluationError,
    Expression,
    ExpressionError,
    ProfileView,
    compile_expression,
    evaluate_amount,
    evaluate_condition,
    evaluate_target,
    validate_expression,
)

PROFILES = {
    "alice": ProfileView(user_id="alice", tier="vip", is_vip=True, is_pro=False, sponsor="bob"),
    "bob": ProfileView(user_id="bob", tier="pro", is_vip=False, is_pro=True, sponsor="carol"),
}
UPLINE = {"alice": ["bob", "carol"], "bob": ["carol"]}


def _upline(user, n):
    chain = UPLINE.get(user, [])
    return chain[n - 1] if n <= len(chain) else None


def make_ctx(context=None, actor="alice", subject="bob", event_type="quest.completed", profile=None, upline=None):
    return EvaluationContext(
        event_type=event_type,
        actor=actor,
        primary_subject=subject,
        context=SAMPLE_CONTEXT if context is None else context,
        profile=profile or PROFILES.get,
        upline=upline or _upline,
    )


SAMPLE_CONTEXT = {
    "level": 1,
    "total_quests_completed": 12,
    "base_reward_points": 100,
    "amount": 250,
    "rf_partner_id": "partner-7",
    "ratio": 2.5,
    "name": "Quest Master",
    "tags": ["daily", "bonus"],
    "zero": 0,
    "empty": "",
    "nothing": None,
    "flag": True,
    "nested": {"a": {"b": 42}, "items": [1, 2, 3], "s": "text"},
    "num_str": "10",
    "items": "a key that shadows a dict method",
}


VALID = [
    # SPEC §6 examples
    ("context.level == 1", True),
    ("context.total_quests_completed >= 10", True),
    ("context.base_reward_points", 100),
    ("floor(context.amount * 5 / 100)", 12),
    ("actor_profile.is_vip", True),
    ("upline(actor, 1)", "bob"),
    ("upline(actor, 2)", "carol"),
    ("upline(actor, 3)", None),
    ("context.rf_partner_id", "partner-7"),
    ("floor(context.base_reward_points / 2)", 50),
    # names
    ("event_type", "quest.completed"),
    ("actor", "alice"),
    ("primary_subject", "bob"),
    ("event_type == 'quest.completed'", True),
    ("actor_profile.tier", "vip"),
    ("actor_profile.is_pro", False),
    ("actor_profile.sponsor", "bob"),
    ("subject_profile.tier", "pro"),
    ("subject_profile.is_pro", True),
    ("actor_profile.is_vip or actor_profile.is_pro", True),
    ("upline(primary_subject, 1)", "carol"),
    ("upline(context.rf_partner_id, 1)", None),
    ("upline(context.nothing, 1)", None),
    ("upline(context.level, 1)", None),
    # dotted paths
    ("context.nested.a.b", 42),
    ("context.nested.a.b * 2", 84),
    ("context.nested.a.missing", None),
    ("context.nested.items", [1, 2, 3]),
    ("context.items", "a key that shadows a dict method"),
    ("context.name.upper", None),  # a path through a string is null, never a method
    ("context.tags.count", None),
    ("context.level.real", None),
    # null semantics
    ("context.missing", None),
    ("context.missing == null", True),
    ("context.nothing == null", True),
    ("context.level == null", False),
    ("context.missing != null", False),
    ("context.level != null", True),
    ("context.zero == null", False),
    ("context.empty == null", False),
    ("context.missing < 1", False),
    ("context.missing <= 1", False),
    ("context.missing > 1", False),
    ("context.missing >= 1", False),
    ("1 < context.missing", False),
    ("null < null", False),
    ("null == null", True),
    ("not context.missing", True),
    ("context.missing and true", None),
    ("context.missing or 7", 7),
    ("context.missing or context.level", 1),
    ("'a' in context.missing", False),
    ("'a' not in context.missing", True),
    ("context.missing.deeper.still", None),
    ("context.level.deeper", None),
    ("len(context.nested)", 3),
    # in
    ("'daily' in context.tags", True),
    ("'weekly' in context.tags", False),
    ("'weekly' not in context.tags", True),
    ("'Quest' in context.name", True),
    ("'level' in context", True),
    ("'nope' in context", False),
    ("2 in context.nested.items", True),
    ("true in context.nested.items", False),  # booleans never equal numbers
    # literals and aliases
    ("'single'", "single"),
    ('"double"', "double"),
    ("'it''s'", "its"),
    ("true", True),
    ("false", False),
    ("null", None),
    ("True", True),
    ("False", False),
    ("None", None),
    ("true == True", True),
    ("null == None", True),
    ("true == 1", False),
    ("1 == 1.0", True),
    ("42", 42),
    ("2.5", 2.5),
    ("-3", -3),
    ("-context.level", -1),
    # arithmetic and precedence
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 // 2", 3),
    ("-7 // 2", -4),
    ("7 % 3", 1),
    ("5 / 2", 2.5),
    ("context.ratio * 4", 10.0),
    ("'a' + 'b'", "ab"),
    ("context.name + '!'", "Quest Master!"),
    ("1000 - 1", 999),
    # comparisons and logic
    ("1 < 2 < 3", True),
    ("3 > 2 > 2", False),
    ("'abc' < 'abd'", True),
    ("context.level == 1 and context.total_quests_completed >= 10", True),
    ("context.level == 2 or context.flag", True),
    ("not context.flag", False),
    ("not (context.level == 1)", False),
    ("context.level == 1 and actor_profile.is_vip and not subject_profile.is_vip", True),
    # functions
    ("floor(2.7)", 2),
    ("floor(-2.5)", -3),
    ("round(2.5)", 2),
    ("round(2.567, 2)", 2.57),
    ("round(7)", 7),
    ("min(3, 1, 2)", 1),
    ("max(3, 1, 2)", 3),
    ("max(context.nested.items)", 3),
    ("min('b', 'a')", "a"),
    ("min(context.base_reward_points, 50)", 50),
    ("abs(-5)", 5),
    ("len(context.name)", 12),
    ("len(context.tags)", 2),
    ("len('')", 0),
    ("floor(context.amount * 5 / 100) + len(context.tags)", 14),
    # whitespace and comments are fine
    ("  context.level\n == 1  ", True),
    ("context.level == 1  # first level", True),
]


@pytest.mark.parametrize(("source", "expected"), VALID)
def test_valid_expressions(source, expected):
    expression = compile_expression(source)
    result = expression.evaluate(make_ctx())
    assert result == expected
    assert type(result) is type(expected)


def test_uses_upline_flag():
    assert compile_expression("upline(actor, 1)").uses_upline is True
    assert compile_expression("context.level == 1 and upline(actor, 2) != null").uses_upline is True
    assert compile_expression("context.level == 1").uses_upline is False


def test_compile_is_memoised_and_reusable():
    first = compile_expression("context.level + 1")
    assert compile_expression("context.level + 1") is first
    assert first.source == "context.level + 1"
    assert first.evaluate(make_ctx({"level": 1})) == 2
    assert first.evaluate(make_ctx({"level": 41})) == 42
    with pytest.raises(AttributeError):
        first.source = "1"  # frozen


def test_profile_of_unknown_user_reads_as_null_and_false():
    ctx = make_ctx(actor="stranger", subject=None)
    assert compile_expression("actor_profile.tier").evaluate(ctx) is None
    assert compile_expression("actor_profile.sponsor").evaluate(ctx) is None
    assert compile_expression("actor_profile.is_vip").evaluate(ctx) is False
    assert compile_expression("subject_profile.is_pro").evaluate(ctx) is False
    assert compile_expression("primary_subject").evaluate(ctx) is None
    assert compile_expression("upline(primary_subject, 1)").evaluate(ctx) is None


def test_profile_lookup_happens_once_per_user_per_evaluation_and_only_when_used():
    calls = []

    def profile(user_id):
        calls.append(user_id)
        return PROFILES.get(user_id)

    ctx = make_ctx(profile=profile)
    assert compile_expression("actor_profile.is_vip or actor_profile.is_pro or actor_profile.tier").evaluate(ctx)
    assert calls == ["alice"]
    calls.clear()
    compile_expression("context.level == 1").evaluate(ctx)
    assert calls == []


def test_upline_receives_user_and_level():
    calls = []

    def upline(user, n):
        calls.append((user, n))
        return "x"

    assert compile_expression("upline(actor, 10)").evaluate(make_ctx(upline=upline)) == "x"
    assert calls == [("alice", 10)]


def test_callback_errors_propagate_unchanged():
    class Boom(Exception):
        pass

    def upline(user, n):
        raise Boom("database down")

    with pytest.raises(Boom):
        compile_expression("upline(actor, 1)").evaluate(make_ctx(upline=upline))


def test_shared_expression_across_threads():
    expression = compile_expression("floor(context.amount * 5 / 100) + len(actor)")
    errors = []

    def work(i):
        try:
            for j in range(300):
                amount = i * 1000 + j
                ctx = make_ctx({"amount": amount}, actor="u" * (i + 1))
                assert expression.evaluate(ctx) == math.floor(amount * 5 / 100) + i + 1
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------------------------
# Hostile or invalid expressions: refused when compiled (i.e. when the rule is saved)

HOSTILE = [
    "__import__('os')",
    "__import__('os').system('true')",
    "().__class__.__bases__",
    "''.__class__.__mro__[1].__subclasses__()",
    "context.__class__",
    "context.__dict__",
    "context._private",
    "context.a._b",
    "actor_profile.__class__",
    "actor_profile.user_id",
    "actor_profile",
    "subject_profile.tier.x",
    "open('x')",
    "open",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[x for x in range(10)]",
    "{x: 1 for x in 'ab'}",
    "(x for x in context)",
    "9**9**9",
    "2 ** 10",
    "'a' * 10**9",
    "(" * 200 + "1" + ")" * 200,
    "(" * 40 + "1" + ")" * 40,
    "-" * 500 + "1",
    "not " * 100 + "true",
    "+".join(["1"] * 400),
    "'" + "a" * 100_000 + "'",
    "1" * (MAX_SOURCE_LENGTH + 1),
    "f'{context}'",
    "f'{1+1}'",
    "getattr(context, 'level')",
    "context['level']",
    "context.tags[0]",
    "context.name[0:2]",
    "floor.__name__",
    "len.x",
    "upline(actor, 1).x",
    "'abc'.upper()",
    "context.name.upper()",
    "actor.strip",
    "event_type.x",
    "unknown_name",
    "int('3')",
    "str(1)",
    "eval('1')",
    "exec('1')",
    "globals()",
    "round(2.5, ndigits=1)",
    "max(*context.tags)",
    "max(**context)",
    "(x := 1)",
    "1 if true else 2",
    "[1, 2]",
    "(1, 2)",
    "{'a': 1}",
    "{1}",
    "1 & 2",
    "1 | 2",
    "1 ^ 2",
    "~1",
    "1 << 2",
    "1 >> 2",
    "+1",
    "null is null",
    "1 is not 2",
    "b'bytes'",
    "1j",
    "...",
    "1e999",
    "10000000000000000000000",
    "import os",
    "x = 1",
    "1; 2",
    "yield 1",
    "await context",
    "",
    "   ",
    "floor()",
    "floor(1, 2)",
    "upline(actor)",
    "upline(actor, 1, 2)",
    "round(1, 2, 3)",
    "min()",
    "len(1, 2)",
    "context.",
    "1 +",
    "'unterminated",
    "a\x00b",
    "context.level ==",
    "print(1)",
    "__builtins__",
    "__import__",
]


@pytest.mark.parametrize("source", HOSTILE)
def test_hostile_expressions_are_refused_at_compile_time(source):
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    assert str(info.value)  # a human message for the admin
    if source.strip():
        with pytest.raises(ExpressionError):
            validate_expression(source)


def test_expression_error_is_a_value_error_with_a_readable_message():
    with pytest.raises(ValueError, match="unknown name 'foo'"):
        compile_expression("foo + 1")
    with pytest.raises(ExpressionError, match="_secret"):
        compile_expression("context.a._secret")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        compile_expression("(" * 200 + "1" + ")" * 200)


def test_non_string_source_is_an_expression_error():
    with pytest.raises(ExpressionError):
        compile_expression(123)
    with pytest.raises(ExpressionError):
        compile_expression(["context"])


@pytest.mark.parametrize("source", ["", "   ", None])
def test_empty_is_valid_for_validation(source):
    validate_expression(source)


def test_validate_accepts_valid_sources():
    for source, _expected in VALID:
        validate_expression(source)


# ---------------------------------------------------------------------------------------------
# Runtime errors: EvaluationError only

RUNTIME_ERRORS = [
    ("1 / 0", "division by zero"),
    ("context.level / context.zero", "division by zero"),
    ("context.level // 0", "division by zero"),
    ("context.level % 0", "division by zero"),
    ("context.ratio / 0.0", "division by zero"),
    ("context.missing + 1", "null"),
    ("context.nothing * 2", "null"),
    ("-context.missing", "null"),
    ("context.name + 1", "string"),
    ("context.num_str + 1", "string"),
    ("1 - 'a'", "string"),
    ("'ab' * 3", "string"),
    ("'a' * 1000000000", "string"),
    ("context.name % 3", "string"),
    ("context.flag + 1", "boolean"),
    ("context.tags + context.tags", "list"),
    ("context.level < 'a'", "compare"),
    ("context.flag > 0", "compare"),
    ("context.tags < 1", "compare"),
    ("1 in context.name", "string"),
    ("'a' in context.level", "membership"),
    ("context.tags in context", "object"),
    ("floor(context.name)", "floor"),
    ("floor(null)", "floor"),
    ("round('x')", "round"),
    ("round(1.5, 1.5)", "digits"),
    ("round(1.5, 100)", "digits"),
    ("abs(context.missing)", "abs"),
    ("len(context.level)", "len"),
    ("len(null)", "len"),
    ("min(1, 'a')", "min"),
    ("max(context.missing, 1)", "max"),
    ("min(5)", "list"),
    ("max(context.nested.a)", "list"),
    ("upline(actor, 0)", "upline"),
    ("upline(actor, 11)", "upline"),
    ("upline(actor, '1')", "upline"),
    ("upline(actor, null)", "upline"),
    ("upline(actor, 1.0)", "upline"),
    ("upline(actor, true)", "upline"),
    ("1000000000000000 + 1", "range"),
    ("1000000 * 1000000 * 1001", "range"),
    ("-1000000000000000 - 1", "range"),
    ("1e15 * 10", "range"),
    ("context.big_float * context.big_float", "range"),
    ("context.huge_int", "range"),
    ("context.huge_int / 3", "range"),
    ("context.nan_value", "NaN"),
    ("context.nan_value + 1", "NaN"),
    ("floor(context.inf_value)", "range"),
    ("context.long_string + context.long_string", "too long"),
]

RUNTIME_CONTEXT = {
    **SAMPLE_CONTEXT,
    "big_float": 1e200,
    "huge_int": 10**100,
    "nan_value": float("nan"),
    "inf_value": float("inf"),
    "long_string": "x" * 6000,
}


@pytest.mark.parametrize(("source", "message"), RUNTIME_ERRORS)
def test_runtime_errors_are_evaluation_errors(source, message):
    expression = compile_expression(source)  # valid at save time
    with pytest.raises(EvaluationError) as info:
        expression.evaluate(make_ctx(RUNTIME_CONTEXT))
    assert message.lower() in str(info.value).lower()


# ---------------------------------------------------------------------------------------------
# The three entry points used by the engine


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("", True),
        ("   ", True),
        (None, True),
        ("context.level == 1", True),
        ("context.level == 2", False),
        ("context.missing", False),
        ("null", False),
        ("context.zero", False),
        ("context.empty", False),
        ("context.tags", True),
        ("context.nested.items", True),
        ("context.base_reward_points", True),
        ("actor_profile.is_vip", True),
        ("subject_profile.is_vip", False),
        ("upline(actor, 5) != null", False),
    ],
)
def test_evaluate_condition(source, expected):
    assert evaluate_condition(source, make_ctx()) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("", None),
        ("  ", None),
        ("actor", "alice"),
        ("primary_subject", "bob"),
        ("context.rf_partner_id", "partner-7"),
        ("upline(actor, 1)", "bob"),
        ("upline(actor, 2)", "carol"),
        ("upline(actor, 3)", None),
        ("context.missing", None),
        ("context.empty", None),
        ("context.level", "1"),
        ("actor_profile.sponsor", "bob"),
    ],
)
def test_evaluate_target(source, expected):
    assert evaluate_target(source, make_ctx()) == expected


def test_evaluate_target_of_null_subject():
    assert evaluate_target("primary_subject", make_ctx(subject=None)) is None


@pytest.mark.parametrize("source", ["context.flag", "context.ratio", "context.tags", "context.nested", "true"])
def test_evaluate_target_refuses_non_ids(source):
    with pytest.raises(EvaluationError):
        evaluate_target(source, make_ctx())


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("context.base_reward_points", 100),
        ("floor(context.base_reward_points / 2)", 50),
        ("context.amount * 5 / 100", 12),
        ("context.ratio", 2),
        ("0 - context.ratio", -3),
        ("0", 0),
        ("-5", -5),
        ("1000000000000", 10**12),
        ("-1000000000000", -(10**12)),
        ("context.missing or 3", 3),
        ("max(context.base_reward_points, 500)", 500),
    ],
)
def test_evaluate_amount(source, expected):
    result = evaluate_amount(source, make_ctx())
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "source",
    [
        "",
        "context.flag",
        "true",
        "context.name",
        "context.num_str",
        "context.missing",
        "null",
        "context.nan_value",
        "context.inf_value",
        "context.tags",
        "context.nested",
        "1000000000001",
        "-1000000000001",
        "1000000000001.5",
        "context.base_reward_points / 0",
        "context.missing * 2",
        "context.name + 1",
    ],
)
def test_evaluate_amount_errors(source):
    with pytest.raises(EvaluationError):
        evaluate_amount(source, make_ctx(RUNTIME_CONTEXT))


def test_entry_points_raise_expression_error_for_invalid_source():
    for fn in (evaluate_condition, evaluate_target, evaluate_amount):
        with pytest.raises(ExpressionError):
            fn("context.__class__", make_ctx())


# ---------------------------------------------------------------------------------------------
# Property tests: whatever the text, only ExpressionError / EvaluationError can escape


class Canary:
    """An object planted in the context: the language must never reach into it."""

    touched: list = []

    def __getattribute__(self, name):
        if name != "__class__":
            Canary.touched.append(name)
        return object.__getattribute__(self, name)


KEYS = ["a", "b", "level", "amount", "name", "tags", "items", "x"]
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=12,
)
contexts = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6)
user_ids = st.none() | st.sampled_from(["alice", "bob", "carol", "stranger", ""])

TOKENS = [
    "event_type",
    "actor",
    "primary_subject",
    "context",
    "actor_profile",
    "subject_profile",
    ".",
    "a",
    "b",
    "level",
    "amount",
    "name",
    "tags",
    "items",
    "tier",
    "is_vip",
    "is_pro",
    "sponsor",
    "upline",
    "floor",
    "round",
    "min",
    "max",
    "abs",
    "len",
    "(",
    ")",
    ",",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "and",
    "or",
    "not",
    "in",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "0",
    "1",
    "2",
    "10",
    "-1",
    "2.5",
    "1e14",
    "999999999999999",
    "'s'",
    '"abc"',
    "''",
    "true",
    "false",
    "null",
    "True",
    "False",
    "None",
    # a few hostile tokens mixed in
    "__class__",
    "_x",
    "[",
    "]",
    ":",
    "**",
    "lambda",
    "if",
    "else",
    "for",
    "=",
    ":=",
    "f'",
    "open",
    "getattr",
    "|",
    "~",
    "is",
]


def _check_source(source, context, actor, subject):
    upline_calls = []

    def upline(user, n):
        upline_calls.append((user, n))
        assert isinstance(user, str) and user
        assert isinstance(n, int) and 1 <= n <= 10
        return _upline(user, n)

    def profile(user_id):
        assert isinstance(user_id, str) and user_id
        return PROFILES.get(user_id)

    Canary.touched.clear()
    context = {**context, "canary": Canary()}
    try:
        expression = compile_expression(source)
    except ExpressionError as exc:
        assert str(exc)
        return
    assert isinstance(expression, Expression)
    ctx = make_ctx(context, actor=actor or "alice", subject=subject, profile=profile, upline=upline)
    try:
        result = expression.evaluate(ctx)
    except EvaluationError as exc:
        assert str(exc)
    else:
        assert result is None or isinstance(result, bool | int | float | str | list | dict | Canary)
        if isinstance(result, int | float) and not isinstance(result, bool):
            assert abs(result) <= 10**15
    for fn in (evaluate_condition, evaluate_target, evaluate_amount):
        try:
            fn(source, ctx)
        except EvaluationError:
            pass
    if upline_calls:
        assert expression.uses_upline
    assert Canary.touched == []


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.text(max_size=200), context=contexts, actor=user_ids, subject=user_ids)
def test_random_text_only_raises_language_errors(source, context, actor, subject):
    _check_source(source, context, actor, subject)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    tokens=st.lists(st.sampled_from(TOKENS), min_size=1, max_size=30),
    separator=st.sampled_from([" ", ""]),
    context=contexts,
    actor=user_ids,
    subject=user_ids,
)
def test_token_soup_only_raises_language_errors(tokens, separator, context, actor, subject):
    _check_source(separator.join(tokens), context, actor, subject)


# A grammar of well-formed expressions, so that evaluation (not just compilation) is exercised a lot.
atoms = st.sampled_from(
    [
        "context.a",
        "context.b",
        "context.level",
        "context.amount",
        "context.name",
        "context.tags",
        "context.a.b",
        "context.items",
        "context.canary",
        "context.canary.x",
        "context",
        "actor",
        "primary_subject",
        "event_type",
        "actor_profile.tier",
        "subject_profile.is_vip",
        "actor_profile.sponsor",
        "0",
        "1",
        "-3",
        "2.5",
        "1e14",
        "'s'",
        "''",
        "true",
        "false",
        "null",
    ]
)


def _combine(children):
    binary = st.tuples(
        children,
        st.sampled_from(["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "in", "not in"]),
        children,
    ).map(lambda t: f"({t[0]} {t[1]} {t[2]})")
    unary = st.tuples(st.sampled_from(["-", "not "]), children).map(lambda t: f"({t[0]}{t[1]})")
    call1 = st.tuples(st.sampled_from(["floor", "round", "abs", "len", "min", "max"]), children).map(
        lambda t: f"{t[0]}({t[1]})"
    )
    call2 = st.tuples(st.sampled_from(["upline", "round", "min", "max"]), children, children).map(
        lambda t: f"{t[0]}({t[1]}, {t[2]})"
    )
    return binary | unary | call1 | call2


expressions = st.recursive(atoms, _combine, max_leaves=15)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(source=expressions, context=contexts, actor=user_ids, subject=user_ids)
def test_generated_expressions_only_raise_language_errors(source, context, actor, subject):
    _check_source(source, context, actor, subject)


@pytest.mark.parametrize("bad", ["u" * 101, "a\x00b"])
def test_target_that_cannot_be_a_user_id_is_an_evaluation_error(bad):
    with pytest.raises(EvaluationError, match="not a valid user id"):
        evaluate_target("context.host", make_ctx({"host": bad}))
    assert evaluate_target("context.host", make_ctx({"host": "u" * 100})) == "u" * 100
