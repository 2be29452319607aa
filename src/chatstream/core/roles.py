"""Client roles: which client may call which API, and how a client earns a better role.

The definition format is the original ChatStream's (``client_roles``)::

    {
        "user": {"apis": {"allow": ["chat_stream", ...], "auth_method": "nothing",
                          "use_session": True}},
        "admin": {"apis": {"allow": "all", "auth_method": "ui_pass_phrase",
                           "ui_pass_phrase": "...", "use_session": True,
                           "enable_dev_tool": True}},
        "lb": {"apis": {"allow": ["get_load"], "auth_method": "header_phrase_sha256",
                        "header_phrase": "<sha256 hex>", "use_session": False}},
    }

A *browser* role (``use_session`` true) lives in an HTTP session: exactly one browser role has
``auth_method`` ``"nothing"`` and is what every new session gets; the others are granted by
typing their pass phrase into the chat (``ui_pass_phrase``, ``ui_pass_phrase_sha256``). An
*agent* role (``use_session`` false) is for clients without a session: at most one agent role
has ``"nothing"`` and serves every session-less client; the others are chosen by a credential
header (``header_phrase``, ``header_phrase_sha256``; for the latter the ``header_phrase`` key
holds the hex digest, as in the original).

Unlike the original, everything is validated up front (a bad definition used to surface as a
500 on some later request), phrases are compared in constant time, a ``None`` chat input is
not a crash, and no phrase, credential or digest ever appears in an exception or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

from .errors import ConfigError

__all__ = [
    "API_NAMES",
    "AUTH_METHODS",
    "AuthMethod",
    "ClientRole",
    "ClientRoles",
]

#: Every API a role can allow: the original's ten, then the OpenAI-compatible API, the
#: Prometheus metrics, the developer tool, the session's history and its conversations (for
#: the web UI).
#: Health checks are never role-gated.
API_NAMES: Final[tuple[str, ...]] = (
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
    "openai",
    "metrics",
    "dev_tool",
    "get_history",
    "conversations",
)

AuthMethod = Literal[
    "nothing",
    "ui_pass_phrase",
    "ui_pass_phrase_sha256",
    "header_phrase",
    "header_phrase_sha256",
]
#: The values ``auth_method`` accepts.
AUTH_METHODS: Final[tuple[AuthMethod, ...]] = get_args(AuthMethod)

# Where each method keeps its secret. header_phrase_sha256 reuses "header_phrase" (original).
_SECRET_KEY: Final[Mapping[str, str]] = {
    "ui_pass_phrase": "ui_pass_phrase",
    "ui_pass_phrase_sha256": "ui_pass_phrase_sha256",
    "header_phrase": "header_phrase",
    "header_phrase_sha256": "header_phrase",
}
_ROLE_KEYS: Final = frozenset({"apis"})
_APIS_KEYS: Final = frozenset(
    {"allow", "auth_method", "use_session", "enable_dev_tool"} | set(_SECRET_KEY.values())
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")

# The defaults let the bundled web UI work and a load balancer read the load; the system
# prompt, resource usage, metrics and the dev tool need a promoted role.
_DEFAULT_USER_APIS: Final = (
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
)
_DEFAULT_AGENT_APIS: Final = ("get_load",)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class ClientRole:
    """One role: the APIs it allows and how a client gets it. Holds no secret.

    Attributes:
        name: the role's name, as defined (sessions store it).
        allowed: the API names this role may call (``"all"`` already expanded).
        auth_method: how a client obtains the role; ``"nothing"`` marks a default role.
        use_session: True for a browser role (kept in a session), False for an agent role.
        enable_dev_tool: whether the web UI shows its developer tool to this role.
    """

    name: str
    allowed: frozenset[str]
    auth_method: AuthMethod
    use_session: bool
    enable_dev_tool: bool = False

    def __post_init__(self) -> None:
        unknown = self.allowed - set(API_NAMES)
        if unknown:
            raise ValueError(f"unknown API names: {sorted(unknown)}")
        if self.auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {list(AUTH_METHODS)}")

    @property
    def is_default(self) -> bool:
        """True for a role given without any credential (``auth_method`` ``"nothing"``)."""
        return self.auth_method == "nothing"

    def allows(self, api_name: str) -> bool:
        """Whether this role may call ``api_name``.

        Raises:
            ValueError: ``api_name`` is not in :data:`API_NAMES` (a programming error: a
                misspelt name must not quietly deny, as ``webui_js`` did in the original).
        """
        if api_name not in API_NAMES:
            raise ValueError(f"unknown API name {api_name!r}")
        return api_name in self.allowed

    def __repr__(self) -> str:
        # Sorted, so that logs do not depend on the string hash seed.
        return (
            f"ClientRole(name={self.name!r}, allowed={sorted(self.allowed)!r}, "
            f"auth_method={self.auth_method!r}, use_session={self.use_session!r}, "
            f"enable_dev_tool={self.enable_dev_tool!r})"
        )


#: A short name for :class:`ClientRole`. Not exported from :mod:`chatstream.core`, where
#: ``Role`` is the chat message role (:class:`chatstream.core.conversation.Role`).


def _encode(text: str) -> bytes:
    # surrogatepass: a JSON body may carry a lone surrogate ("\ud800"); that must not be a 500.
    return text.encode("utf-8", "surrogatepass")


def _sha256(text: str) -> bytes:
    return hashlib.sha256(_encode(text)).digest()


def _match(secrets: tuple[tuple[ClientRole, bytes], ...], text: str | None) -> ClientRole | None:
    """The role whose secret digest equals the digest of ``text``, comparing every role."""
    if not text:
        # No phrase is empty, so this reveals nothing.
        return None
    # Comparing digests, not the phrases themselves, keeps the phrase lengths secret too.
    digest = _sha256(text)
    found: ClientRole | None = None
    for role, secret in secrets:
        # No early exit: the time taken does not tell which role (if any) matched.
        if hmac.compare_digest(digest, secret):
            found = role
    return found


class ClientRoles:
    """A validated set of client roles, with the lookups the HTTP adapter needs.

    Args:
        definitions: ``{role_name: {"apis": {...}}}`` in the original's format (see the
            module docstring).

    Raises:
        ConfigError: any invalid definition. ``option`` names the offending key, for
            example ``"client_roles.admin.apis.allow"``. Messages never contain a phrase.
    """

    __slots__ = ("_agent_default", "_agent_secrets", "_browser_default", "_roles", "_ui_secrets")

    def __init__(self, definitions: Mapping[str, Any]) -> None:
        if not isinstance(definitions, Mapping):
            raise ConfigError("client_roles", "must be a mapping of role name to definition")
        roles: dict[str, ClientRole] = {}
        # SHA-256 digests of every phrase (plain ones hashed here), to compare uniformly.
        ui_secrets: list[tuple[ClientRole, bytes]] = []
        agent_secrets: list[tuple[ClientRole, bytes]] = []
        owners: dict[bytes, str] = {}
        for name, definition in definitions.items():
            role, secret = _parse_role(name, definition)
            roles[name] = role
            if secret is None:
                continue
            option = f"client_roles.{name}.apis.{_SECRET_KEY[role.auth_method]}"
            if secret in owners:
                raise ConfigError(option, f"the same phrase as role {owners[secret]!r}")
            owners[secret] = name
            (ui_secrets if role.use_session else agent_secrets).append((role, secret))

        browser_defaults = [r.name for r in roles.values() if r.is_default and r.use_session]
        agent_defaults = [r.name for r in roles.values() if r.is_default and not r.use_session]
        if len(browser_defaults) != 1:
            raise ConfigError(
                "client_roles",
                "exactly one browser default role (auth_method 'nothing', use_session true) "
                f"is required, got {browser_defaults}",
            )
        if len(agent_defaults) > 1:
            raise ConfigError(
                "client_roles",
                "at most one agent default role (auth_method 'nothing', use_session false) "
                f"is allowed, got {agent_defaults}",
            )
        self._roles = roles
        self._browser_default = roles[browser_defaults[0]]
        self._agent_default = roles[agent_defaults[0]] if agent_defaults else None
        self._ui_secrets = tuple(ui_secrets)
        self._agent_secrets = tuple(agent_secrets)

    @staticmethod
    def default_definitions() -> dict[str, Any]:
        """A fresh copy of the default definitions, to extend with promoted roles.

        Browser default ``"user"``: the web UI, chat, feedback, generation parameters, the
        load and the OpenAI-compatible API. Agent default ``"agent"``: ``get_load`` only, so
        a load balancer can read the load without a credential.
        """
        return {
            "user": {
                "apis": {
                    "allow": list(_DEFAULT_USER_APIS),
                    "auth_method": "nothing",
                    "use_session": True,
                }
            },
            "agent": {
                "apis": {
                    "allow": list(_DEFAULT_AGENT_APIS),
                    "auth_method": "nothing",
                    "use_session": False,
                }
            },
        }

    @classmethod
    def default(cls) -> ClientRoles:
        """The default roles (see :meth:`default_definitions`)."""
        return cls(cls.default_definitions())

    @property
    def browser_default(self) -> ClientRole:
        """The role of a session that has not been promoted."""
        return self._browser_default

    @property
    def agent_default(self) -> ClientRole | None:
        """The role of a session-less client without a valid credential; None: refuse it."""
        return self._agent_default

    def __iter__(self) -> Iterator[ClientRole]:
        """Every role, in definition order."""
        return iter(self._roles.values())

    def __len__(self) -> int:
        return len(self._roles)

    def role(self, name: str) -> ClientRole | None:
        """The role called ``name``; None if there is none (a stale name from a session)."""
        return self._roles.get(name)

    def agent_for_credential(self, credential: str | None) -> ClientRole | None:
        """The agent role whose header phrase is ``credential``; None if none is.

        Every agent role is compared, in constant time, whatever matches. Browser pass
        phrases never match here.
        """
        return _match(self._agent_secrets, credential)

    def promotion_for_input(self, user_input: str | None) -> ClientRole | None:
        """The browser role whose pass phrase is exactly ``user_input``; None if none is.

        Call it on every chat input before the input reaches the history; on a match, store
        the role's name in the session and answer with the grant instead of generating.
        Agent header phrases never match here.
        """
        return _match(self._ui_secrets, user_input)

    def resolve(
        self,
        *,
        session_role: str | None,
        credential: str | None,
        has_session: bool = False,
    ) -> ClientRole | None:
        """Who is this request? The role to check the API against, or None.

        1. A valid agent credential wins, session or not: agents are identified by their
           credential, never by a header the client chooses to send or omit.
        2. Otherwise, with a session (``has_session`` true, or any ``session_role`` given),
           the browser role named ``session_role`` if it is still defined as a browser role,
           else the browser default (a fresh session, or a name made stale by a config
           change: the session falls back, it is never refused or left privileged).
        3. Otherwise None: a session-less client without a valid credential. The adapter then
           uses :attr:`agent_default`, and answers 403 when that is None too.

        A credential that matches nothing is treated as absent, not as an error.

        The HTTP adapter calls it as::

            role = roles.resolve(
                session_role=session.get(ROLE_KEY) if session is not None else None,
                credential=request.headers.get("X-ChatStream-Auth-Header"),
                has_session=session is not None,
            ) or roles.agent_default

        Args:
            session_role: the role name stored in the request's session, if any.
            credential: the agent credential header's value, if sent.
            has_session: whether the request has a session (needed when the session holds
                no role name yet).
        """
        agent = self.agent_for_credential(credential)
        if agent is not None:
            return agent
        if session_role is None and not has_session:
            return None
        stored = self._roles.get(session_role) if session_role is not None else None
        # Only a browser role may come from a session: an agent role needs its credential.
        if stored is not None and stored.use_session:
            return stored
        return self._browser_default

    def __repr__(self) -> str:
        agent = self._agent_default.name if self._agent_default is not None else None
        return (
            f"ClientRoles(roles={list(self._roles)!r}, "
            f"browser_default={self._browser_default.name!r}, agent_default={agent!r})"
        )


def _parse_role(name: object, definition: object) -> tuple[ClientRole, bytes | None]:
    """One validated role and the SHA-256 digest of its phrase (None for a default role)."""
    if not isinstance(name, str) or not name:
        raise ConfigError("client_roles", "role names must be non-empty strings")
    option = f"client_roles.{name}"
    if not isinstance(definition, Mapping):
        raise ConfigError(option, 'must be a mapping with the key "apis"')
    _reject_unknown_keys(option, definition, _ROLE_KEYS)
    if "apis" not in definition:
        raise ConfigError(option, 'the key "apis" is required')
    apis = definition["apis"]
    option = f"{option}.apis"
    if not isinstance(apis, Mapping):
        raise ConfigError(option, "must be a mapping")
    _reject_unknown_keys(option, apis, _APIS_KEYS)

    allowed = _parse_allow(f"{option}.allow", apis)
    use_session = _parse_bool(f"{option}.use_session", apis.get("use_session", False))
    enable_dev_tool = _parse_bool(f"{option}.enable_dev_tool", apis.get("enable_dev_tool", False))

    method_option = f"{option}.auth_method"
    if "auth_method" not in apis:
        raise ConfigError(method_option, f"is required, one of {list(AUTH_METHODS)}")
    method = apis["auth_method"]
    if method not in AUTH_METHODS:
        # The value is not echoed: a misplaced phrase must not end up in a log.
        raise ConfigError(method_option, f"must be one of {list(AUTH_METHODS)}")
    auth_method = cast("AuthMethod", method)
    if auth_method.startswith("ui_") and not use_session:
        raise ConfigError(method_option, f"{auth_method!r} needs a browser role (use_session)")
    if auth_method.startswith("header_") and use_session:
        raise ConfigError(method_option, f"{auth_method!r} needs an agent role (no use_session)")

    secret_key = _SECRET_KEY.get(auth_method)
    for key in _SECRET_KEY.values():
        if key in apis and key != secret_key:
            raise ConfigError(f"{option}.{key}", f"is not used by auth_method {auth_method!r}")
    role = ClientRole(
        name=name,
        allowed=allowed,
        auth_method=auth_method,
        use_session=use_session,
        enable_dev_tool=enable_dev_tool,
    )
    if secret_key is None:
        return role, None
    secret_option = f"{option}.{secret_key}"
    if secret_key not in apis:
        raise ConfigError(secret_option, f"is required by auth_method {auth_method!r}")
    secret = apis[secret_key]
    if not isinstance(secret, str):
        raise ConfigError(secret_option, "must be a string")
    if auth_method.endswith("_sha256"):
        if len(secret) != 64 or not set(secret) <= _HEX_DIGITS:
            raise ConfigError(secret_option, "must be a SHA-256 digest: 64 hexadecimal digits")
        return role, bytes.fromhex(secret)
    if not secret.strip():
        raise ConfigError(secret_option, "must not be empty or only whitespace")
    if auth_method == "header_phrase" and not _is_header_value(secret):
        # HTTP strips surrounding whitespace and only carries ASCII reliably: such a phrase
        # could never match.
        raise ConfigError(
            secret_option, "must be printable ASCII without leading or trailing whitespace"
        )
    return role, _sha256(secret)


def _reject_unknown_keys(option: str, mapping: Mapping[Any, Any], known: frozenset[str]) -> None:
    unknown = [key for key in mapping if key not in known]
    if unknown:
        raise ConfigError(option, f"unknown keys {unknown!r}; known keys are {sorted(known)}")


def _parse_allow(option: str, apis: Mapping[str, Any]) -> frozenset[str]:
    if "allow" not in apis:
        raise ConfigError(option, 'is required: "all" or a list of API names')
    allow = apis["allow"]
    if allow == "all":
        return frozenset(API_NAMES)
    if isinstance(allow, str) or not isinstance(allow, list | tuple | set | frozenset):
        raise ConfigError(option, 'must be "all" or a list of API names')
    unknown = [api for api in allow if api not in API_NAMES]
    if unknown:
        raise ConfigError(option, f"unknown API names {unknown!r}; known are {list(API_NAMES)}")
    return frozenset(allow)


def _parse_bool(option: str, value: object) -> bool:
    # Strictly a bool: the string "false" is truthy.
    if not isinstance(value, bool):
        raise ConfigError(option, "must be true or false")
    return value


def _is_header_value(text: str) -> bool:
    return text.isascii() and text.isprintable() and text == text.strip()
