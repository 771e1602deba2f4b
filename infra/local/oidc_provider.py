"""An OpenID Connect provider for the dashboard's sign-in tests: oidc-provider-mock (a third-party
provider built on Authlib), requiring a nonce and PKCE, on a free port of this machine.

oidc-provider-mock does not check PKCE by itself; Authlib's own RFC 7636 extension is added to its
authorization-code grant here, so that a wrong or missing code_verifier is refused as a real
provider refuses it.

Prints `port N` once it listens, and stops when its stdin closes (its owner went away).
"""

import sys

import authlib.integrations.flask_oauth2 as flask_oauth2
from authlib.oauth2.rfc7636 import CodeChallenge

import oidc_provider_mock
from oidc_provider_mock import _app

# code -> (code_challenge, code_challenge_method), as sent with the authorization request.
CHALLENGES: dict[str, tuple[str | None, str | None]] = {}

save_authorization_code = _app.AuthorizationCodeGrant.save_authorization_code


def save_with_challenge(self, code, request):
    data = request.payload.data
    CHALLENGES[code] = (data.get("code_challenge"), data.get("code_challenge_method"))
    return save_authorization_code(self, code, request)


class StoredCodeChallenge(CodeChallenge):
    def get_authorization_code_challenge(self, authorization_code):
        return CHALLENGES.get(authorization_code.code, (None, None))[0]

    def get_authorization_code_challenge_method(self, authorization_code):
        return CHALLENGES.get(authorization_code.code, (None, None))[1]


register_grant = flask_oauth2.AuthorizationServer.register_grant


def register_with_pkce(self, grant_cls, extensions=None):
    if grant_cls is _app.AuthorizationCodeGrant:
        extensions = [*(extensions or []), StoredCodeChallenge(required=True)]
    return register_grant(self, grant_cls, extensions)


_app.AuthorizationCodeGrant.save_authorization_code = save_with_challenge
flask_oauth2.AuthorizationServer.register_grant = register_with_pkce


def main() -> None:
    with oidc_provider_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        print(f"port {server.server_port}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
