import pytest

from hroute.core.identity import backend_identity, is_loopback, normalize_base_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080"),
        ("HTTP://LocalHost:8080/", "http://127.0.0.1:8080"),
        ("http://[::1]:8080/v1", "http://[::1]:8080"),
        ("http://[FE80::1]:8080/v1/", "http://[fe80::1]:8080"),
        ("https://api.openai.com:443/v1", "https://api.openai.com"),
        ("http://example.com:80/", "http://example.com"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api"),
        ("https://OpenRouter.ai/api/v1/", "https://openrouter.ai/api"),
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("https://example.com:8443/v1beta", "https://example.com:8443/v1beta"),
    ],
)
def test_normalize_base_url(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


def test_hermes_spelling_finds_the_configured_server() -> None:
    configured = backend_identity("llama-server", "http://127.0.0.1:8080")
    assert backend_identity("openai", "http://localhost:8080/v1/") == configured


def test_anthropic_facade_is_not_the_openai_server_on_another_port() -> None:
    a = backend_identity("anthropic", "http://127.0.0.1:8082")
    b = backend_identity("openai", "http://127.0.0.1:8082")
    assert a != b  # different api_mode on the same URL is a different backend


def test_is_loopback() -> None:
    assert is_loopback("http://localhost:8080/v1")
    assert is_loopback("http://127.0.0.2:1")
    assert not is_loopback("https://api.anthropic.com")
