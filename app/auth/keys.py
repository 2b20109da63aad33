"""The keys of one token section (client.token or client.subscription_token), parsed once:
HMAC secrets (current and previous), RSA/ECDSA public keys, a JWKS client, and the aud/iss
expectations; signature checks against them."""

from __future__ import annotations

import hmac
import re
import time
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms

from app.auth.claims import claim_as_string, opt_str, parse_audience
from app.auth.errors import TokenInvalid
from app.auth.jwks import JwksClient, check_template_safety
from app.goregex import GoSubmatchRegexp, compile_go_submatch_regexp

if TYPE_CHECKING:
    from app.config import TokenConfig

_ALGORITHMS = get_default_algorithms()
_HMAC_DIGESTS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512"})
# cristalhq/jwt refuses an ES verifier whose key curve does not fit the alg; so do we.
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_JWK_ALGS = _RSA_ALGS | _EC_CURVES.keys() | {"EdDSA"}


def _load_pem_public_key(pem: str, key_path: str) -> Any:
    data = pem.strip().encode()
    try:
        return load_pem_public_key(data)
    except (ValueError, TypeError):
        pass
    try:
        return x509.load_pem_x509_certificate(data).public_key()
    except (ValueError, TypeError):
        raise ValueError(f"{key_path}: not a PEM public key or certificate") from None


def _hmac_states(secret: str) -> dict[str, hmac.HMAC] | None:
    if not secret:
        return None
    key = secret.encode()
    return {alg: hmac.new(key, digestmod=d) for alg, d in _HMAC_DIGESTS.items()}


def _hmac_ok(state: hmac.HMAC, msg: bytes, sig: bytes) -> bool:
    mac = state.copy()
    mac.update(msg)
    return hmac.compare_digest(mac.digest(), sig)


class Keys:
    """Parsed keys and claim expectations of one token section (client.token or
    client.subscription_token)."""

    def __init__(self, tcfg: TokenConfig, section: str) -> None:
        secret = tcfg.hmac_secret_key
        previous = tcfg.hmac_previous_secret_key
        # Keyed HMAC states are built once and copied per token: cheaper than hmac.digest().
        self.hmac_macs = _hmac_states(secret)
        self.hmac_previous_macs = _hmac_states(previous)
        self.hmac_previous_until = int(tcfg.hmac_previous_secret_key_valid_until)

        self.rsa_key: RSAPublicKey | None = None
        rsa_pem = tcfg.rsa_public_key
        if rsa_pem:
            key = _load_pem_public_key(rsa_pem, f"{section}.rsa_public_key")
            if not isinstance(key, RSAPublicKey):
                raise ValueError(f"{section}.rsa_public_key: not an RSA public key")
            self.rsa_key = key

        self.ec_key: EllipticCurvePublicKey | None = None
        ec_pem = tcfg.ecdsa_public_key
        if ec_pem:
            key = _load_pem_public_key(ec_pem, f"{section}.ecdsa_public_key")
            if not isinstance(key, EllipticCurvePublicKey):
                raise ValueError(f"{section}.ecdsa_public_key: not an ECDSA public key")
            self.ec_key = key

        self.audience: str = tcfg.audience
        self.issuer: str = tcfg.issuer
        self.audience_re = self._compile(tcfg.audience_regex, "audience_regex", section)
        self.issuer_re = self._compile(tcfg.issuer_regex, "issuer_regex", section)

        endpoint = tcfg.jwks_public_endpoint
        self.jwks: JwksClient | None = None
        if endpoint:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"{section}.jwks_public_endpoint: must be an http(s) URL")
            if not tcfg.insecure_skip_jwks_endpoint_safety_check:
                check_template_safety(
                    endpoint,
                    [r.pattern for r in (self.issuer_re, self.audience_re) if r is not None],
                    section,
                )
            self.jwks = JwksClient(endpoint)
        self.checks_aud_iss = bool(
            self.audience or self.issuer or self.audience_re or self.issuer_re
        )
        claim = tcfg.user_id_claim or "sub"
        self.user_id_claim: str = claim

    @staticmethod
    def _compile(pattern: str, name: str, section: str) -> GoSubmatchRegexp | None:
        if not pattern:
            return None
        try:
            # Go regexps (RE2), as Centrifugo: linear-time matching, Go's syntax.
            return compile_go_submatch_regexp(pattern)
        except re.error as e:
            raise ValueError(f"invalid value for {section}.{name}: {pattern!r}: {e}") from None

    def check_aud_iss(self, claims: dict[str, Any]) -> dict[str, str]:
        """Check aud/iss; returns the named regex groups (JWKS URL template variables).

        Regexes search, not full-match: Centrifugo uses Go's unanchored FindStringSubmatch.
        """
        variables: dict[str, str] = {}
        if not self.checks_aud_iss:
            return variables
        if self.audience or self.audience_re is not None:
            audience = parse_audience(claims)
            if self.audience and self.audience not in audience:
                raise TokenInvalid("invalid audience")
            if self.audience_re is not None:
                for a in audience:
                    groups = self.audience_re.named_groups(a)
                    if groups is not None:
                        variables.update(groups)
                        break
                else:
                    raise TokenInvalid("audience not matched")
        if self.issuer or self.issuer_re is not None:
            issuer = opt_str(claims, "iss")
            if self.issuer and issuer != self.issuer:
                raise TokenInvalid("invalid issuer")
            if self.issuer_re is not None:
                groups = self.issuer_re.named_groups(issuer)
                if groups is None:
                    raise TokenInvalid("issuer not matched")
                variables.update(groups)
        return variables

    def verify_static(self, alg: str, msg: bytes, sig: bytes) -> None:
        """Signature check against configured HMAC/RSA/ECDSA keys (synchronous: no I/O)."""
        if alg in _HMAC_DIGESTS:
            current, previous = self.hmac_macs, self.hmac_previous_macs
            if current is None and previous is None:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            if current is not None and _hmac_ok(current[alg], msg, sig):
                return
            if (
                previous is not None
                and (self.hmac_previous_until == 0 or time.time() < self.hmac_previous_until)
                and _hmac_ok(previous[alg], msg, sig)
            ):
                return
            raise TokenInvalid("signature mismatch")
        if alg in _RSA_ALGS:
            if self.rsa_key is None:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            key: Any = self.rsa_key
        elif alg in _EC_CURVES:
            if self.ec_key is None or self.ec_key.curve.name != _EC_CURVES[alg]:
                raise TokenInvalid(f"disabled JWT algorithm: {alg}")
            key = self.ec_key
        else:
            raise TokenInvalid(f"unsupported JWT algorithm: {alg}")
        if not _ALGORITHMS[alg].verify(msg, key, sig):
            raise TokenInvalid("signature mismatch")

    async def verify_jwk(
        self, alg: str, kid: str, msg: bytes, sig: bytes, variables: dict[str, str]
    ) -> None:
        assert self.jwks is not None
        if alg not in _JWK_ALGS:  # refuse before any fetch ("none", HS*, PS*...)
            raise TokenInvalid(f"unsupported JWT algorithm: {alg}")
        jwk = await self.jwks.get_key(kid, variables)
        if jwk.alg and jwk.alg != alg:
            raise TokenInvalid(f"algorithm mismatch: token {alg}, key {jwk.alg}")
        if jwk.kty == "RSA":
            ok_type = alg in _RSA_ALGS and isinstance(jwk.key, RSAPublicKey)
        elif jwk.kty == "EC":
            ok_type = (
                alg in _EC_CURVES
                and isinstance(jwk.key, EllipticCurvePublicKey)
                and jwk.key.curve.name == _EC_CURVES[alg]
            )
        else:  # OKP
            ok_type = alg == "EdDSA" and isinstance(jwk.key, Ed25519PublicKey)
        if not ok_type:
            raise TokenInvalid(f"unsupported JWT algorithm for {jwk.kty} key: {alg}")
        if not _ALGORITHMS[alg].verify(msg, jwk.key, sig):
            raise TokenInvalid("signature mismatch")

    def user(self, claims: dict[str, Any], sub: str) -> str:
        if self.user_id_claim == "sub":
            return sub
        return claim_as_string(claims.get(self.user_id_claim))
