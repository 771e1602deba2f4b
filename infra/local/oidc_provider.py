"""An OpenID Connect provider for the dashboard's sign-in tests: oidc-provider-mock (a third-party
provider built on Authlib), requiring a nonce, on a free port of this machine.

Prints `port N` once it listens, and stops when its stdin closes (its owner went away).
"""

import sys

import oidc_provider_mock


def main() -> None:
    with oidc_provider_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        print(f"port {server.server_port}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
