"""Tests of client roles: the defaults, every invalid definition, credentials, promotion,
the precedence of :meth:`ClientRoles.resolve`, and that no secret ever leaks into a message.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from chatstream.core.errors import ConfigError
from chatstream.core.roles import API_NAMES, AUTH_METHODS, ClientRole, ClientRoles

PHRASE = "open-sesame-42"
DIGEST = hashlib.sha256(PHRASE.encode()).hexdigest()

ADMIN_PHRASE = "admin-phrase"
AUDITOR_PHRASE = "auditor-phrase"
LB_TOKEN = "lb-token"
BOT_TOKEN = "bot-token"
SECRETS = (ADMIN_PHRASE, AUDITOR_PHRASE, LB_TOKEN, BOT_TOKEN)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sha_surrogates(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def user() -> dict[str, Any]:
    return {"apis": {"allow": ["chat_stream"], "auth_method": "nothing", "use_session": True}}


def browser(**apis: Any) -> dict[str, Any]:
    return {"apis": {"allow": "all", "use_session": True, **apis}}


def agent(**apis: Any) -> dict[str, Any]:
    return {"apis": {"allow": "all", "use_session": False, **apis}}


def definitions() -> dict[str, Any]:
    return {
        "user": user(),
        "agent": {"apis": {"allow": ["get_load"], "auth_method": "nothing"}},
        "admin": browser(
            auth_method="ui_pass_phrase", ui_pass_phrase=ADMIN_PHRASE, enable_dev_tool=True
        ),
        "auditor": browser(
            allow=["get_prompt"],
            auth_method="ui_pass_phrase_sha256",
            ui_pass_phrase_sha256=sha(AUDITOR_PHRASE),
        ),
        "lb": agent(
            allow=("get_load", "get_resource_usage", "metrics"),
            auth_method="header_phrase",
            header_phrase=LB_TOKEN,
        ),
        # Upper-case hex is accepted (the original compared with hexdigest(), so it never matched).
        "bot": agent(auth_method="header_phrase_sha256", header_phrase=sha(BOT_TOKEN).upper()),
    }


@pytest.fixture
def roles() -> ClientRoles:
    return ClientRoles(definitions())


# -- defaults ---------------------------------------------------------------------------------


def test_default_roles_let_the_web_ui_work() -> None:
    roles = ClientRoles.default()
    user_role = roles.browser_default
    assert user_role.name == "user" and user_role.use_session and user_role.is_default
    assert user_role.allowed == {
        "chat_stream",
        "clear_context",
        "set_feedback",
        "get_generation_params",
        "set_generation_params",
        "get_load",
        "webui_index",
        "webui_js",
        "openai",
        "get_history",
        "conversations",
    }
    for api in ("webui_index", "webui_js", "chat_stream", "openai", "get_load", "get_history"):
        assert user_role.allows(api)
    for api in ("get_prompt", "get_resource_usage", "metrics", "dev_tool"):
        assert not user_role.allows(api)
    assert not user_role.enable_dev_tool


def test_default_agent_role_reads_the_load_only() -> None:
    roles = ClientRoles.default()
    agent_role = roles.agent_default
    assert agent_role is not None
    assert agent_role.name == "agent" and not agent_role.use_session and agent_role.is_default
    assert agent_role.allowed == {"get_load"}
    assert [api for api in API_NAMES if agent_role.allows(api)] == ["get_load"]
    # No credential at all: the adapter falls back to the agent default.
    assert roles.resolve(session_role=None, credential=None) is None
    assert (
        roles.resolve(session_role=None, credential=None, has_session=True) is roles.browser_default
    )


def test_default_definitions_are_a_fresh_copy() -> None:
    first = ClientRoles.default_definitions()
    first["user"]["apis"]["allow"].append("get_prompt")
    first["admin"] = browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE)
    extended = ClientRoles(first)
    assert extended.browser_default.allows("get_prompt")
    assert extended.promotion_for_input(PHRASE) is extended.role("admin")
    assert not ClientRoles.default().browser_default.allows("get_prompt")
    assert ClientRoles.default().role("admin") is None


def test_api_and_auth_names() -> None:
    assert API_NAMES[:10] == (
        "chat_stream",
        "clear_context",
        "get_prompt",
        "set_generation_params",
        "get_generation_params",
        "set_feedback",
        "get_load",
        "get_resource_usage",
        "webui_index",
        "webui_js",
    )
    assert set(API_NAMES[10:]) == {"openai", "metrics", "dev_tool", "get_history", "conversations"}
    assert len(set(API_NAMES)) == len(API_NAMES)
    assert "health" not in API_NAMES
    assert AUTH_METHODS == (
        "nothing",
        "ui_pass_phrase",
        "ui_pass_phrase_sha256",
        "header_phrase",
        "header_phrase_sha256",
    )


# -- the parsed roles -------------------------------------------------------------------------


def test_roles_are_parsed_in_definition_order(roles: ClientRoles) -> None:
    assert [r.name for r in roles] == ["user", "agent", "admin", "auditor", "lb", "bot"]
    assert len(roles) == 6
    admin = roles.role("admin")
    assert admin == ClientRole(
        name="admin",
        allowed=frozenset(API_NAMES),
        auth_method="ui_pass_phrase",
        use_session=True,
        enable_dev_tool=True,
    )
    assert not admin.is_default
    lb = roles.role("lb")
    assert lb is not None and lb.allowed == {"get_load", "get_resource_usage", "metrics"}
    assert not lb.use_session and not lb.enable_dev_tool
    assert roles.role("nobody") is None
    assert roles.browser_default is roles.role("user")
    assert roles.agent_default is roles.role("agent")


def test_allow_all_allows_every_api(roles: ClientRoles) -> None:
    bot = roles.role("bot")
    assert bot is not None
    assert all(bot.allows(api) for api in API_NAMES)


@pytest.mark.parametrize("api", ["web_ui_js", "health", "", "CHAT_STREAM"])
def test_allows_an_unknown_api_is_a_programming_error(roles: ClientRoles, api: str) -> None:
    with pytest.raises(ValueError, match="unknown API name"):
        roles.browser_default.allows(api)


def test_client_role_checks_its_own_fields() -> None:
    with pytest.raises(ValueError, match="unknown API names"):
        ClientRole(
            name="x", allowed=frozenset({"web_ui_js"}), auth_method="nothing", use_session=True
        )
    with pytest.raises(ValueError, match="auth_method"):
        ClientRole(
            name="x",
            allowed=frozenset(),
            auth_method="password",  # type: ignore[arg-type]
            use_session=True,
        )


def test_no_agent_default_is_allowed() -> None:
    roles = ClientRoles({"user": user()})
    assert roles.agent_default is None
    assert roles.resolve(session_role=None, credential=None) is None
    assert repr(roles) == "ClientRoles(roles=['user'], browser_default='user', agent_default=None)"


# -- no secret in a repr ----------------------------------------------------------------------


def test_reprs_show_no_phrase(roles: ClientRoles) -> None:
    texts = [repr(roles), str(roles)] + [repr(r) for r in roles] + [str(r) for r in roles]
    for text in texts:
        for secret in (*SECRETS, sha(AUDITOR_PHRASE), sha(BOT_TOKEN)):
            assert secret not in text
            assert secret.upper() not in text
    assert repr(roles) == (
        "ClientRoles(roles=['user', 'agent', 'admin', 'auditor', 'lb', 'bot'], "
        "browser_default='user', agent_default='agent')"
    )
    # Sorted: a log line does not depend on the hash seed.
    assert repr(roles.role("lb")) == (
        "ClientRole(name='lb', allowed=['get_load', 'get_resource_usage', 'metrics'], "
        "auth_method='header_phrase', use_session=False, enable_dev_tool=False)"
    )


# -- agent credentials ------------------------------------------------------------------------


def test_agent_credentials(roles: ClientRoles) -> None:
    assert roles.agent_for_credential(LB_TOKEN) is roles.role("lb")
    assert roles.agent_for_credential(BOT_TOKEN) is roles.role("bot")


@pytest.mark.parametrize(
    "credential",
    [
        None,
        "",
        "wrong",
        LB_TOKEN[:-1],
        LB_TOKEN + " ",
        LB_TOKEN.upper(),
        sha(BOT_TOKEN),  # the stored digest is not itself a credential
        sha(LB_TOKEN),
        ADMIN_PHRASE,  # a browser pass phrase is not an agent credential
        AUDITOR_PHRASE,
        "\ud800",  # a lone surrogate is not a crash
    ],
)
def test_wrong_agent_credentials(roles: ClientRoles, credential: str | None) -> None:
    assert roles.agent_for_credential(credential) is None


# -- browser promotion ------------------------------------------------------------------------


def test_promotion(roles: ClientRoles) -> None:
    assert roles.promotion_for_input(ADMIN_PHRASE) is roles.role("admin")
    assert roles.promotion_for_input(AUDITOR_PHRASE) is roles.role("auditor")


@pytest.mark.parametrize(
    "user_input",
    [
        None,
        "",
        "hello",
        " " + ADMIN_PHRASE,
        ADMIN_PHRASE.capitalize(),
        sha(AUDITOR_PHRASE),
        LB_TOKEN,  # an agent credential typed into the chat promotes nothing
        BOT_TOKEN,
        "\udfff",
    ],
)
def test_no_promotion(roles: ClientRoles, user_input: str | None) -> None:
    assert roles.promotion_for_input(user_input) is None


def test_none_input_with_only_a_sha256_role_is_not_a_crash() -> None:
    # The original raised on None.encode() when the first promotable role was a sha256 one.
    roles = ClientRoles(
        {
            "user": user(),
            "admin": browser(auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256=DIGEST),
        }
    )
    assert roles.promotion_for_input(None) is None
    assert roles.promotion_for_input(PHRASE) is roles.role("admin")


def test_non_ascii_pass_phrases() -> None:
    roles = ClientRoles(
        {
            "user": user(),
            "plain": browser(auth_method="ui_pass_phrase", ui_pass_phrase="ひらけごま"),
            "hashed": browser(
                auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256=sha("開けゴマ🔑")
            ),
        }
    )
    assert roles.promotion_for_input("ひらけごま") is roles.role("plain")
    assert roles.promotion_for_input("開けゴマ🔑") is roles.role("hashed")


# -- resolve ----------------------------------------------------------------------------------


def test_a_valid_credential_beats_the_session(roles: ClientRoles) -> None:
    assert roles.resolve(session_role="admin", credential=LB_TOKEN) is roles.role("lb")
    assert roles.resolve(session_role=None, credential=BOT_TOKEN) is roles.role("bot")
    assert roles.resolve(session_role=None, credential=LB_TOKEN, has_session=True) is roles.role(
        "lb"
    )


def test_the_session_role(roles: ClientRoles) -> None:
    assert roles.resolve(session_role="admin", credential=None) is roles.role("admin")
    assert roles.resolve(session_role="auditor", credential="wrong") is roles.role("auditor")
    assert roles.resolve(session_role="user", credential=None) is roles.browser_default


@pytest.mark.parametrize("session_role", ["gone", "", "lb", "agent", "bot"])
def test_a_stale_or_agent_session_role_falls_back_to_the_browser_default(
    roles: ClientRoles, session_role: str
) -> None:
    # An agent role never comes from a session: it needs its credential on every request.
    assert roles.resolve(session_role=session_role, credential=None) is roles.browser_default


def test_a_fresh_session_gets_the_browser_default(roles: ClientRoles) -> None:
    assert roles.resolve(session_role=None, credential=None, has_session=True) is (
        roles.browser_default
    )
    assert roles.resolve(session_role=None, credential="wrong", has_session=True) is (
        roles.browser_default
    )


@pytest.mark.parametrize("credential", [None, "", "wrong", ADMIN_PHRASE])
def test_no_session_and_no_valid_credential_is_none(
    roles: ClientRoles, credential: str | None
) -> None:
    assert roles.resolve(session_role=None, credential=credential) is None


KNOWN = {*SECRETS, sha(AUDITOR_PHRASE), sha(BOT_TOKEN)}


@given(st.text())
def test_wrong_credentials_never_resolve_to_a_promoted_role(guess: str) -> None:
    assume(guess not in KNOWN)
    roles = ClientRoles(definitions())
    assert roles.agent_for_credential(guess) is None
    assert roles.promotion_for_input(guess) is None
    assert roles.resolve(session_role=None, credential=guess) is None
    assert roles.resolve(session_role="user", credential=guess) is roles.browser_default
    assert roles.resolve(session_role="lb", credential=guess) is roles.browser_default


@given(st.text(min_size=1).filter(str.strip))
def test_any_pass_phrase_works_plain_or_hashed(phrase: str) -> None:
    for auth_method, key, secret in [
        ("ui_pass_phrase", "ui_pass_phrase", phrase),
        ("ui_pass_phrase_sha256", "ui_pass_phrase_sha256", sha_surrogates(phrase)),
    ]:
        roles = ClientRoles(
            {"user": user(), "admin": browser(auth_method=auth_method, **{key: secret})}
        )
        assert roles.promotion_for_input(phrase) is roles.role("admin")
        assert roles.agent_for_credential(phrase) is None


# -- invalid definitions ----------------------------------------------------------------------


def with_role(role: Any, name: Any = "x") -> dict[Any, Any]:
    return {"user": user(), name: role}


INVALID: list[Any] = [
    # (id, definitions, option)
    ("not a mapping", ["user"], "client_roles"),
    ("empty", {}, "client_roles"),
    (
        "non-string name",
        with_role(browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE), 1),
        "client_roles",
    ),
    (
        "empty name",
        with_role(browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE), ""),
        "client_roles",
    ),
    ("role not a mapping", with_role(PHRASE), "client_roles.x"),
    (
        "unknown role key",
        with_role({**agent(auth_method="header_phrase", header_phrase=PHRASE), "allow": "all"}),
        "client_roles.x",
    ),
    ("missing apis", with_role({}), "client_roles.x"),
    ("apis not a mapping", with_role({"apis": ["all"]}), "client_roles.x.apis"),
    (
        "unknown apis key",
        with_role(agent(auth_method="header_phrase", header_phrase=PHRASE, header=PHRASE)),
        "client_roles.x.apis",
    ),
    (
        "misspelt phrase key",
        with_role(browser(auth_method="ui_pass_phrase", ui_passphrase=PHRASE)),
        "client_roles.x.apis",
    ),
    (
        "missing allow",
        with_role(
            {
                "apis": {
                    "auth_method": "ui_pass_phrase",
                    "ui_pass_phrase": PHRASE,
                    "use_session": True,
                }
            }
        ),
        "client_roles.x.apis.allow",
    ),
    (
        "allow a string",
        with_role(browser(allow="chat_stream", auth_method="nothing")),
        "client_roles.x.apis.allow",
    ),
    (
        "allow ALL",
        with_role(browser(allow="ALL", auth_method="nothing")),
        "client_roles.x.apis.allow",
    ),
    (
        "allow a number",
        with_role(browser(allow=1, auth_method="nothing")),
        "client_roles.x.apis.allow",
    ),
    (
        "allow a mapping",
        with_role(browser(allow={"chat_stream": True}, auth_method="nothing")),
        "client_roles.x.apis.allow",
    ),
    (
        "unknown api",
        with_role(
            agent(
                allow=["get_load", "web_ui_js"], auth_method="header_phrase", header_phrase=PHRASE
            )
        ),
        "client_roles.x.apis.allow",
    ),
    (
        "unhashable api",
        with_role(browser(allow=[["chat_stream"]], auth_method="nothing")),
        "client_roles.x.apis.allow",
    ),
    (
        "use_session a string",
        with_role(agent(use_session="false", auth_method="header_phrase", header_phrase=PHRASE)),
        "client_roles.x.apis.use_session",
    ),
    (
        "enable_dev_tool a number",
        with_role(browser(enable_dev_tool=1, auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE)),
        "client_roles.x.apis.enable_dev_tool",
    ),
    (
        "missing auth_method",
        with_role(browser(ui_pass_phrase=PHRASE)),
        "client_roles.x.apis.auth_method",
    ),
    (
        "unknown auth_method",
        with_role(browser(auth_method=PHRASE)),
        "client_roles.x.apis.auth_method",
    ),
    ("auth_method None", with_role(browser(auth_method=None)), "client_roles.x.apis.auth_method"),
    (
        "ui method on an agent role",
        with_role(agent(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE)),
        "client_roles.x.apis.auth_method",
    ),
    (
        "ui method on a role without use_session",
        with_role(
            {
                "apis": {
                    "allow": "all",
                    "auth_method": "ui_pass_phrase_sha256",
                    "ui_pass_phrase_sha256": DIGEST,
                }
            }
        ),
        "client_roles.x.apis.auth_method",
    ),
    (
        "header method on a browser role",
        with_role(browser(auth_method="header_phrase", header_phrase=PHRASE)),
        "client_roles.x.apis.auth_method",
    ),
    (
        "header sha256 on a browser role",
        with_role(browser(auth_method="header_phrase_sha256", header_phrase=DIGEST)),
        "client_roles.x.apis.auth_method",
    ),
    (
        "phrase on a default role",
        with_role(agent(auth_method="nothing", header_phrase=PHRASE)),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "other method's phrase",
        with_role(
            browser(
                auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE, ui_pass_phrase_sha256=DIGEST
            )
        ),
        "client_roles.x.apis.ui_pass_phrase_sha256",
    ),
    (
        "ui key on a header role",
        with_role(
            agent(auth_method="header_phrase_sha256", header_phrase=DIGEST, ui_pass_phrase=PHRASE)
        ),
        "client_roles.x.apis.ui_pass_phrase",
    ),
    (
        "missing ui_pass_phrase",
        with_role(browser(auth_method="ui_pass_phrase")),
        "client_roles.x.apis.ui_pass_phrase",
    ),
    (
        "missing ui_pass_phrase_sha256",
        with_role(browser(auth_method="ui_pass_phrase_sha256")),
        "client_roles.x.apis.ui_pass_phrase_sha256",
    ),
    (
        "missing header_phrase",
        with_role(agent(auth_method="header_phrase")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "missing header digest",
        with_role(agent(auth_method="header_phrase_sha256")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "phrase not a string",
        with_role(browser(auth_method="ui_pass_phrase", ui_pass_phrase=42)),
        "client_roles.x.apis.ui_pass_phrase",
    ),
    (
        "digest bytes",
        with_role(agent(auth_method="header_phrase_sha256", header_phrase=bytes.fromhex(DIGEST))),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "empty ui phrase",
        with_role(browser(auth_method="ui_pass_phrase", ui_pass_phrase="")),
        "client_roles.x.apis.ui_pass_phrase",
    ),
    (
        "blank ui phrase",
        with_role(browser(auth_method="ui_pass_phrase", ui_pass_phrase=" \t")),
        "client_roles.x.apis.ui_pass_phrase",
    ),
    (
        "empty header phrase",
        with_role(agent(auth_method="header_phrase", header_phrase="")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "header phrase with spaces around",
        with_role(agent(auth_method="header_phrase", header_phrase=f" {PHRASE} ")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "header phrase not ascii",
        with_role(agent(auth_method="header_phrase", header_phrase=f"{PHRASE}é")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "header phrase with a newline",
        with_role(agent(auth_method="header_phrase", header_phrase=f"{PHRASE}\nX-Admin: 1")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "plain phrase as a ui digest",
        with_role(browser(auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256=PHRASE)),
        "client_roles.x.apis.ui_pass_phrase_sha256",
    ),
    (
        "plain phrase as a header digest",
        with_role(agent(auth_method="header_phrase_sha256", header_phrase=PHRASE)),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "short digest",
        with_role(agent(auth_method="header_phrase_sha256", header_phrase=DIGEST[:-1])),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "long digest",
        with_role(agent(auth_method="header_phrase_sha256", header_phrase=DIGEST + "0")),
        "client_roles.x.apis.header_phrase",
    ),
    (
        "prefixed digest",
        with_role(
            browser(
                auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256="sha256:" + DIGEST[7:]
            )
        ),
        "client_roles.x.apis.ui_pass_phrase_sha256",
    ),
    (
        "non-hex digest",
        with_role(
            browser(auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256="g" + DIGEST[1:])
        ),
        "client_roles.x.apis.ui_pass_phrase_sha256",
    ),
    (
        "no browser default",
        {"admin": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE)},
        "client_roles",
    ),
    ("only an agent default", {"agent": agent(auth_method="nothing")}, "client_roles"),
    ("two browser defaults", with_role(browser(auth_method="nothing")), "client_roles"),
    (
        "two agent defaults",
        {"user": user(), "a": agent(auth_method="nothing"), "b": agent(auth_method="nothing")},
        "client_roles",
    ),
    (
        "same ui phrase",
        {
            "user": user(),
            "a": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
            "b": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
        },
        "client_roles.b.apis.ui_pass_phrase",
    ),
    (
        "same phrase plain and hashed",
        {
            "user": user(),
            "a": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
            "b": browser(auth_method="ui_pass_phrase_sha256", ui_pass_phrase_sha256=DIGEST.upper()),
        },
        "client_roles.b.apis.ui_pass_phrase_sha256",
    ),
    (
        "same phrase for a browser and an agent",
        {
            "user": user(),
            "a": agent(auth_method="header_phrase_sha256", header_phrase=DIGEST),
            "b": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
        },
        "client_roles.b.apis.ui_pass_phrase",
    ),
    (
        "same header phrase",
        {
            "user": user(),
            "a": agent(auth_method="header_phrase", header_phrase=PHRASE),
            "b": agent(auth_method="header_phrase_sha256", header_phrase=DIGEST),
        },
        "client_roles.b.apis.header_phrase",
    ),
]


@pytest.mark.parametrize(
    ("definitions", "option"),
    [pytest.param(defs, option, id=name) for name, defs, option in INVALID],
)
def test_invalid_definitions(definitions: Any, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClientRoles(definitions)
    error = info.value
    assert error.option == option
    assert isinstance(error, ValueError)
    assert str(error).startswith(f"{option}: ")
    for text in (str(error), repr(error)):
        assert PHRASE not in text
        assert DIGEST not in text.lower()
        assert DIGEST[1:] not in text.lower()
        assert DIGEST[7:] not in text.lower()


def test_error_messages_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="'web_ui_js'"):
        ClientRoles(
            with_role(
                browser(allow=["web_ui_js"], auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE)
            )
        )
    with pytest.raises(ConfigError, match=r"\['user', 'x'\]"):
        ClientRoles(with_role(browser(auth_method="nothing")))
    with pytest.raises(ConfigError, match="the same phrase as role 'a'"):
        ClientRoles(
            {
                "user": user(),
                "a": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
                "b": browser(auth_method="ui_pass_phrase", ui_pass_phrase=PHRASE),
            }
        )
