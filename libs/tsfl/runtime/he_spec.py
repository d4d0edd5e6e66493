"""A job spec's HE keying filled in from key files before it is submitted (``tsfl job
submit --he-keys / --authority``); only public parts are read."""

from __future__ import annotations

import json
from pathlib import Path


def with_he_key(spec_yaml: str, keys_dir: str) -> str:
    """The spec with ``crypto.he`` key id, identity authority and ``keying: shared`` set
    from a shared key set's public part (only the public part is read: the secret never
    goes near the coordinator)."""
    import yaml

    from tsfl.he import HeError, read_public

    try:
        public = read_public(keys_dir)
        raw = json.loads((Path(keys_dir) / "public.json").read_text()
                         if Path(keys_dir).is_dir() else Path(keys_dir).read_text())
    except (HeError, OSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    data = yaml.safe_load(spec_yaml)
    if not isinstance(data, dict):
        raise ValueError("the job spec is not a mapping")
    crypto = data.setdefault("crypto", {})
    if not isinstance(crypto, dict) or crypto.get("mode") != "he":
        raise ValueError("--he-keys is for jobs with crypto.mode he")
    he = crypto.setdefault("he", {})
    if he.get("key_id") not in (None, public.key_id):
        raise ValueError(f"the spec names key {he['key_id']!r}, {keys_dir} holds "
                         f"{public.key_id!r}")
    he["key_id"] = public.key_id
    he["keying"] = "shared"
    if raw.get("authority"):
        he["authority"] = list(raw["authority"])
    return yaml.safe_dump(data, sort_keys=False)


def with_authority(spec_yaml: str, authority: str) -> str:
    """The spec with ``crypto.he.authority`` set to an identity authority's public key
    (hex or a ``.pub`` file): a threshold-HE job's silos are certified by it, and make
    their key in a ceremony through the coordinator before round 1."""
    import yaml

    from tsfl.identity import IdentityError, read_authority_public

    try:
        public = read_authority_public(authority)
    except (IdentityError, OSError) as exc:
        raise ValueError(str(exc)) from None
    data = yaml.safe_load(spec_yaml)
    crypto = data.get("crypto") if isinstance(data, dict) else None
    if not isinstance(crypto, dict) or crypto.get("mode") != "he":
        raise ValueError("--authority is for jobs with crypto.mode he")
    given = crypto.get("he")
    he = given if isinstance(given, dict) else {}
    crypto["he"] = {**he, "authority": [public.hex()]}
    return yaml.safe_dump(data, sort_keys=False)
