"""TLS to the broker: the SSL context from the settings, and what a failed handshake means."""

from __future__ import annotations

import logging
import ssl

from actors.runtime.settings import MqttSettings

log = logging.getLogger(__name__)


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """None without TLS. Certificate and host-name checks are on unless tls_insecure."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_insecure:
        log.warning("TLS certificate checks are OFF (mqtt.tls_insecure): anyone between us and the "
                    "broker can read and change everything; for development only")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def explain(exc: ssl.SSLError, settings: MqttSettings) -> str:
    """A handshake failure in words an operator can act on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        if "Hostname mismatch" in why or "IP address mismatch" in why:
            hint = f"mqtt.host ({settings.host}) must be a name the certificate is for"
        elif "expired" in why or "not yet valid" in why:
            hint = "renew the broker's certificate (or check this machine's clock)"
        else:
            hint = f"is it signed by the CA in mqtt.tls_ca_file ({settings.tls_ca_file or 'the system CAs'})?"
        return f"TLS: the broker's certificate was refused: {why}; {hint}"
    return f"TLS handshake failed: {exc.reason or exc}"
