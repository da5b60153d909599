"""Sensitive values in text and table columns: payment cards, e-mail addresses, phone numbers,
IBANs, national ids, API keys, tokens, private keys and passwords.

Every match is validated before it counts, so digit strings that merely look like a number of
the right length are not flagged:

- payment cards: the issuer's prefix (IIN) and its allowed lengths, then the Luhn checksum
  (ISO/IEC 7812-1). A column in which Luhn-valid numbers are no more frequent than chance (one in
  ten of random digit strings passes) holds random ids, not cards: its hits are dropped
  (:data:`CARD_CHANCE_SHARE`);
- IBANs: the country's length (ISO 13616 registry) and the mod-97 check (ISO 7064);
- US social security numbers without the never-issued area, group and serial numbers, and UK
  national insurance numbers with the prefixes HMRC never allocates;
- secrets: the token formats that secret scanners match (after gitleaks' and detect-secrets'
  rule sets): AWS access keys, GitHub, Slack, Stripe and Google API keys, JSON web tokens, bearer
  tokens, PEM private keys, ``password=...`` assignments, and any non-empty value of a column
  named like a credential.

A finding shows a masked sample (:func:`mask`), never a whole value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

CARD_CHANCE_SHARE = 0.5  #: below this share of Luhn-valid card-shaped numbers, a column holds random ids
CARD_CHANCE_MIN = 20  #: ... judged once a column has at least this many card-shaped numbers


# --- validators ---------------------------------------------------------------------------------------
def luhn(digits: str) -> bool:
    """The Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


#: (issuer, prefix ranges as (low, high) over the first len(low) digits, allowed lengths)
_ISSUERS: list[tuple[str, list[tuple[str, str]], tuple[int, ...]]] = [
    ("Visa", [("4", "4")], (13, 16, 19)),
    ("Mastercard", [("51", "55"), ("2221", "2720")], (16,)),
    ("American Express", [("34", "34"), ("37", "37")], (15,)),
    ("Discover", [("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")], (16, 17, 18, 19)),
    ("JCB", [("3528", "3589")], (16, 17, 18, 19)),
    ("Diners Club", [("300", "305"), ("36", "36"), ("38", "39")], (14, 15, 16, 17, 18, 19)),
    ("UnionPay", [("62", "62")], (16, 17, 18, 19)),
    ("Maestro", [("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("5893", "5893"), ("6304", "6304"),
                 ("6759", "6759"), ("6761", "6763")], (12, 13, 14, 15, 16, 17, 18, 19)),
]


def _expand(lo: str, hi: str) -> list[str]:
    return [str(v).zfill(len(lo)) for v in range(int(lo), int(hi) + 1)]


#: (prefix, length) -> issuer, every prefix spelled out (about 1,500 entries): one look-up per prefix length
_IIN: dict[tuple[str, int], str] = {(pre, n): name for name, ranges, lengths in _ISSUERS for lo, hi in ranges
                                    for pre in _expand(lo, hi) for n in lengths}
_IIN_LENGTHS = sorted({len(pre) for pre, _ in _IIN})


def card_issuer(digits: str) -> str | None:
    """The issuer whose prefix and length rules ``digits`` meets, or None."""
    n = len(digits)
    for k in reversed(_IIN_LENGTHS):  # the longest (most specific) prefix first
        name = _IIN.get((digits[:k], n))
        if name is not None:
            return name
    return None


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(value: str) -> bool:
    """Country length and the ISO 7064 mod-97 check of an IBAN (spaces ignored)."""
    s = value.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


# --- masks --------------------------------------------------------------------------------------------
def _digits(v: str) -> str:
    return re.sub(r"\D", "", v)


def _mask_card(v: str) -> str:
    d = _digits(v)
    return f"{card_issuer(d) or 'card'} {'*' * (len(d) - 4)}{d[-4:]}"


def _mask_email(v: str) -> str:
    local, _, domain = v.partition("@")
    return f"{local[:1]}***@***.{domain.rsplit('.', 1)[-1]}"


def _mask_tail(keep: int) -> Callable[[str], str]:
    def mask(v: str) -> str:
        return "*" * max(len(v) - keep, 3) + v[len(v) - keep:] if keep else "***"
    return mask


def _mask_iban(v: str) -> str:
    s = v.replace(" ", "")
    return f"{s[:2]}{'*' * (len(s) - 6)}{s[-4:]}"


def _mask_head(keep: int) -> Callable[[str], str]:
    return lambda v: v[:keep] + "***"


def _mask_assignment(v: str) -> str:
    return re.split(r"[:=]", v, maxsplit=1)[0].strip() + "=***"


def _mask_pem(v: str) -> str:
    return v.split("-----")[1].strip() if "-----" in v else "PRIVATE KEY"


# --- detectors ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    """One kind of sensitive value: a regular expression, a validator and a mask."""

    kind: str
    rule_id: str
    regex: re.Pattern[str]
    mask: Callable[[str], str]
    valid: Callable[[str], bool] | None = None
    needs: tuple[str, ...] = ()  #: a text holds a match only if it holds one of these (lower-cased) strings

    def may_match(self, text: str, lower: str) -> bool:
        return not self.needs or any(n in lower for n in self.needs)


def _card_valid(v: str) -> bool:
    d = _digits(v)
    return card_issuer(d) is not None and luhn(d)


PATTERNS: list[Pattern] = [
    Pattern("payment-card", "BASTION-DA-010", re.compile(r"(?<![\w-])[0-9](?:[ -]?[0-9]){11,18}(?![\w-])"), _mask_card,
            _card_valid),
    Pattern("email", "BASTION-DA-011",
            re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b"),
            _mask_email, needs=("@",)),
    Pattern("phone", "BASTION-DA-012",
            re.compile(r"(?<![\w+])(?:\+[0-9]{1,3}[ .-]?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]{1,4}(?:[ .-][0-9]{2,4}){1,4}"
                       r"|\([0-9]{3}\)[ ]?[0-9]{3}-[0-9]{4}|[0-9]{3}[-.][0-9]{3}[-.][0-9]{4})(?![\w-])"),
            _mask_tail(2), lambda v: 8 <= len(_digits(v)) <= 15),
    Pattern("iban", "BASTION-DA-013", re.compile(r"\b[A-Z]{2}[0-9]{2}(?:[ ]?[A-Z0-9]){11,30}\b"), _mask_iban, iban_valid),
    Pattern("national-id", "BASTION-DA-014",
            re.compile(r"(?<![\w-])(?!000|666|9[0-9][0-9])[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![\w-])"  # US SSN
                       r"|\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]\b"),
            _mask_tail(2)),
    Pattern("secret", "BASTION-DA-015", re.compile(
        r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                         # AWS access key id
        r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}\b"   # GitHub
        r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"                       # Slack
        r"|\b[sr]k_live_[A-Za-z0-9]{20,}"                        # Stripe
        r"|\bAIza[0-9A-Za-z_-]{35}\b"                            # Google API key
        r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"   # JSON web token
        r"|\b[Bb]earer[ ]+[A-Za-z0-9._~+/-]{20,}=*"),            # bearer token
        _mask_head(4), needs=("akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "k_live_", "aiza", "eyj",
                             "bearer")),
    Pattern("secret", "BASTION-DA-015", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"), _mask_pem,
            needs=("private key",)),
    Pattern("secret", "BASTION-DA-015",
            re.compile(r"(?i)\b(?:password|passwd|pwd|passphrase)[ \t]*[:=][ \t]*[\"']?[^\s\"',;]{4,}"),
            _mask_assignment, needs=("pass", "pwd")),
]

CREDENTIAL_COLUMN = re.compile(r"(?i)(^|[_\W])(pass(word)?|passwd|pwd|secret|api[_-]?key|token|private[_-]?key)"
                               r"($|[_\W])")


def mask(kind: str, value: str) -> str:
    """The masked form of a sensitive ``value`` of ``kind`` (what findings show)."""
    for p in PATTERNS:
        if p.kind == kind:
            return p.mask(value)
    return "***"


# --- scanning -----------------------------------------------------------------------------------------
@dataclass
class Hits:
    """The sensitive values of one kind found in one column."""

    kind: str
    rule_id: str
    rows: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    sample: str = ""
    shaped: int = 0   #: card-shaped numbers (issuer prefix and length) seen, for the chance rule
    valid: int = 0    #: ... of which Luhn-valid

    def add(self, rows: np.ndarray, sample: str) -> None:
        if len(rows):
            self.rows.append(rows)
            self.count += len(rows)
            self.sample = self.sample or sample

    def records(self) -> np.ndarray:
        return np.unique(np.concatenate(self.rows)) if self.rows else np.zeros(0, np.int64)

    @property
    def random_ids(self) -> bool:
        """Payment cards no more frequent than chance: a column of random digit strings."""
        return (self.kind == "payment-card" and self.shaped >= CARD_CHANCE_MIN
                and self.valid < CARD_CHANCE_SHARE * self.shaped)


def scan_values(values: np.ndarray, offset: int, found: dict[str, Hits], credential_column: bool = False) -> None:
    """Scan one chunk of a column (an object array of str; record ``offset`` is its first row)
    and add what it finds to ``found`` (kind -> Hits)."""
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    text = "\n".join(values.tolist())
    lower = text.lower()
    if credential_column:
        rows = np.flatnonzero(lengths > 0)
        found.setdefault("credential-column", Hits("secret", "BASTION-DA-015")).add(rows + offset, "***")
    for p in PATTERNS:
        hits = found.setdefault(p.kind, Hits(p.kind, p.rule_id))
        if not p.may_match(text, lower):
            continue
        pos, sample = [], ""
        for m in p.regex.finditer(text):
            v = m.group()
            if p.kind == "payment-card":
                d = _digits(v)
                if card_issuer(d) is None:
                    continue
                hits.shaped += 1
                if not luhn(d):
                    continue
                hits.valid += 1
            elif p.valid is not None and not p.valid(v):
                continue
            pos.append(m.start())
            sample = sample or p.mask(v)
        if pos:
            rows = np.searchsorted(starts, np.asarray(pos), side="right") - 1
            hits.add(np.unique(rows) + offset, sample)
