"""From an approved application to the card face the printer renders.

The printer knows no applications and no chips (DESIGN §2): this module gathers what it prints
into a :class:`printer.model.CardFace`.  The MRZ comes from the chip package, built exactly as it
is written to DG1 (``chip.mrz.build_td1``), so the printed and the electronic MRZ cannot drift.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from datetime import date
from pathlib import Path

from chip.mrz import build_td1
from personaliser.applications import Application, Rejection, read_applications
from personaliser.ccc import ccc_for
from personaliser.chipstage import card_id_for
from printer.layout import load_layout
from printer.model import CardFace
from printer.proof import ProofFiles, write_proofs

__all__ = [
    "PROOF_SERIAL_PREFIX",
    "card_face",
    "english_name",
    "hkic_symbols",
    "proof_faces",
    "write_application_proofs",
]

#: Serials of proof faces start "PF" so that no proof can be mistaken for a real blank ("HK").
PROOF_SERIAL_PREFIX = b"PF"

# Place of birth -> HKIC symbol, from the Immigration Department's list of symbols printed under
# the date of birth: Z born in Hong Kong, W born in Macao, X born in mainland China, O born
# elsewhere.
_BIRTHPLACE_SYMBOL = {
    "HONG KONG": "Z",
    "KOWLOON": "Z",
    "NEW TERRITORIES": "Z",
    "MACAO": "W",
    "MACAU": "W",
    "GUANGDONG": "X",
    "CHINA": "X",
}


def _age(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def hkic_symbols(app: Application, *, on: date | None = None) -> str:
    """The symbol string of a permanent identity card (e.g. ``"***AZ"``).

    ``***`` holder aged 18 or over, ``*`` aged 11 to 17 (both: eligible for a re-entry permit);
    ``A`` right of abode (a permanent card); then the place-of-birth letter.
    """
    age = _age(app.date_of_birth, on or app.date_of_issue)
    stars = "***" if age >= 18 else "*" if age >= 11 else ""
    return stars + "A" + _BIRTHPLACE_SYMBOL.get(app.place_of_birth.strip().upper(), "O")


def english_name(app: Application) -> str:
    """``"CHAN, Tai Man"``: surname in capitals, comma, given names capitalised (ICAO Doc
    9303-3, 3.4 allows one name field with a comma between primary and secondary identifier)."""
    surname = app.surname.upper()
    given = " ".join(w.capitalize() for w in app.given_names.split())
    return f"{surname}, {given}" if given else surname


def card_face(
    app: Application,
    *,
    chip_serial: str,
    card_id: str,
    date_of_first_registration: date | None = None,
) -> CardFace:
    """The face of ``app``'s card on the blank ``chip_serial`` (upper-case hex).

    ``date_of_first_registration`` defaults to the date of issue (a first registration); a
    replacement card passes the original one.  The Chinese Commercial Code comes from the
    application when it gives one, else from :func:`personaliser.ccc.ccc_for`.
    """
    lines = build_td1(app.to_holder()).lines
    ccc = app.chinese_commercial_code or (ccc_for(app.chinese_name) if app.chinese_name else "")
    return CardFace(
        card_id=card_id,
        chip_serial=chip_serial.upper(),
        english_name=english_name(app),
        chinese_name=app.chinese_name,
        chinese_commercial_code=ccc,
        date_of_birth=app.date_of_birth,
        sex=app.sex,
        date_of_first_registration=date_of_first_registration or app.date_of_issue,
        date_of_issue=app.date_of_issue,
        card_number=app.hkid,
        symbols=hkic_symbols(app),
        mrz_lines=lines,
        portrait_jpeg=app.portrait_jpeg,
    )


def proof_faces(applications: Iterable[Application]) -> Iterator[CardFace]:
    """Faces for proofs, before any chip exists: a stable stand-in serial per application.

    The serial is ``PF`` + 8 bytes of SHA-256 over the application id, so reprinting a proof
    gives the same image; the card id follows the chip stage's rule (``card_id_for``).
    """
    for app in applications:
        digest = hashlib.sha256(app.application_id.encode("utf-8")).digest()
        serial = PROOF_SERIAL_PREFIX + digest[:8]
        yield card_face(app, chip_serial=serial.hex().upper(), card_id=card_id_for(serial))


def write_application_proofs(
    applications: str | Path,
    out_dir: str | Path,
    *,
    layout: str | Path = "hkid-2018",
    dpi: int = 300,
) -> tuple[list[ProofFiles], list[Rejection]]:
    """``perso print proof``: proofs of every valid record of an applications file.

    Writes ``out_dir/cards/<card_id>/front.png`` and ``back.png``; returns the files written and
    the records refused by intake (reported by line and field, never by value).
    """
    accepted: list[Application] = []
    rejected: list[Rejection] = []
    for item in read_applications(applications):
        if isinstance(item, Rejection):
            rejected.append(item)
        else:
            accepted.append(item)
    files = write_proofs(proof_faces(accepted), out_dir, load_layout(layout), dpi=dpi)
    return files, rejected
