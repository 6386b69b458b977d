"""Identity: the hub's CA, device keys and CSRs, join and API tokens, signed requests.

Importing this package pulls in ``cryptography``; the agent imports it only when it
enrolls, renews or calls the hub over HTTPS.
"""

from roost.pki.ca import CertificateAuthority, Revoked, common_name, fingerprint, load_cert
from roost.pki.keys import generate_key, load_key, make_csr
from roost.pki.tokens import JoinToken, hash_secret, new_api_token, new_secret, secret_matches

__all__ = [
    "CertificateAuthority",
    "JoinToken",
    "Revoked",
    "common_name",
    "fingerprint",
    "generate_key",
    "hash_secret",
    "load_cert",
    "load_key",
    "make_csr",
    "new_api_token",
    "new_secret",
    "secret_matches",
]
