"""``perso serve``: the HTTP service and pages on uvicorn.

Kept apart from ``personaliser.cli`` so that ``perso --help`` does not import FastAPI; the heavy
modules are imported in the handler.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import stat
from pathlib import Path
from typing import Any, Final

from personaliser.errors import ConfigError

__all__ = ["add_serve_command", "read_metrics_token"]

#: A scrape token is a secret as long as a session token: 32 characters at least.
MIN_TOKEN_CHARS: Final = 32


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_metrics_token(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 of the Prometheus scrape token in ``path`` (one line).  The file must be
    readable by its owner only (like the MQTT password file), and the token long enough to be a
    secret; otherwise ``ConfigError`` naming the file and the reason, never the token."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read the metrics token ({type(exc).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{file}: the metrics token file must not be readable by others (chmod 600)"
        )
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token) or not token.isprintable():
        raise ConfigError(
            f"{file}: the metrics token must be one word of at least {MIN_TOKEN_CHARS} characters"
        )
    return hashlib.sha256(token.encode("utf-8")).digest()


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415 - see the module docstring

    from personaliser.line import LineSettings, load_line_config  # noqa: PLC0415
    from personaliser.operations import Home  # noqa: PLC0415
    from personaliser.site import load_site_config  # noqa: PLC0415
    from personaliser.web.app import WebSettings, create_app  # noqa: PLC0415

    home = Home.resolve(args.home)
    site_path = Path(args.site_config) if args.site_config else home.path / "site.toml"
    site = load_site_config(site_path)
    line = load_line_config(args.line_config) if args.line_config else LineSettings()
    # Secure cookies unless serving plain http on loopback (where a browser would drop them);
    # behind a TLS proxy on another interface they are on.
    secure = args.secure_cookies if args.secure_cookies is not None else not _loopback(args.host)
    scrape = read_metrics_token(args.metrics_token_file) if args.metrics_token_file else None
    settings = WebSettings(secure_cookies=secure, line=line, metrics_token_digest=scrape)
    app = create_app(home, site, settings)
    print(f"perso serve: http://{args.host}:{args.port}/ (home {home.path}, site {site.site})")
    # No access log: paths may carry application ids, and request metrics are on /metrics.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    return 0


def add_serve_command(sub: Any) -> None:
    p = sub.add_parser("serve", help="the HTTP service and web pages (operator, counter)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--home")
    p.add_argument("--site-config", help="site.toml (default: HOME/site.toml)")
    p.add_argument("--line-config", help="line.toml (default: an in-process line)")
    p.add_argument("--metrics-token-file", metavar="FILE",
                   help="a bearer token (0600 file) that may read /metrics (Prometheus)")  # fmt: skip
    cookies = p.add_mutually_exclusive_group()
    cookies.add_argument("--secure-cookies", dest="secure_cookies", action="store_true",
                         default=None, help="Secure flag on the session cookie (TLS)")  # fmt: skip
    cookies.add_argument("--insecure-cookies", dest="secure_cookies", action="store_false",
                         help="no Secure flag (plain http)")  # fmt: skip
    p.set_defaults(func=_cmd_serve)
