"""A real OAuth2 token endpoint for tests: authlib's ``AuthorizationServer`` with the
client-credentials grant, served by uvicorn on 127.0.0.1.

Usage::

    async with TokenServer({"courier": "secret"}, expires_in=60) as server:
        ... token_url=server.url ...
        assert server.issued  # the access tokens it gave, in order
"""

from __future__ import annotations

import hmac
import secrets
import socket
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from courier_devtools.loopback import LoopbackServer


@dataclass
class _Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    client_secret: str

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""


class _Grant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, uri: str, headers: Any, form: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, owner: TokenServer) -> None:
        super().__init__()
        self.owner = owner
        self.register_grant(_Grant)
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                lambda **_: secrets.token_urlsafe(24),
                expires_generator=lambda client, grant_type: owner.expires_in,
            ),
        )

    def query_client(self, client_id: str) -> _Client | None:
        secret = self.owner.clients.get(client_id)
        return None if secret is None else _Client(client_id, secret)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.owner.issued.append(token["access_token"])

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class TokenServer(LoopbackServer):
    """The token endpoint at ``url``; ``clients`` maps client IDs to secrets (changeable)."""

    def __init__(self, clients: dict[str, str], *, expires_in: int = 3600, port: int = 0) -> None:
        self.clients = dict(clients)
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.answers: list[int] = []
        """Status of each request answered, in order."""
        self._oauth = _Server(self)
        self.app = Starlette(routes=[Route("/oauth/token", self._token, methods=["POST"])])
        super().__init__(port=port)

    @property
    def url(self) -> str:
        """The token endpoint's URL."""
        return f"http://127.0.0.1:{self.port}/oauth/token"

    async def _token(self, request: Request) -> Response:
        # The form as RFC 6749 sends it (urlencoded); parsed here, not by python-multipart.
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        oauth_request = _Request(request.method, str(request.url), request.headers, form)
        status, body, headers = self._oauth.create_token_response(oauth_request)
        self.answers.append(status)
        return JSONResponse(body, status_code=status, headers=dict(headers))


def free_port() -> int:
    """A TCP port nothing listens on now (for a server started later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
