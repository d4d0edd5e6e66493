"""``tsfl keys init|authority``: a shared-key HE job's key set, and identity
authorities that certify devices."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

err = Console(stderr=True)
out = Console()


def cmd_keys(args: argparse.Namespace) -> int:
    """``tsfl keys init JOB.yaml --out DIR --authority CA.pub``: the key authority's
    step for a shared-key HE job; ``tsfl keys authority --out CA.key``: a fresh identity
    authority (private key mode 0600, public key in ``CA.key.pub``), which certifies the
    devices that sign encrypted sections."""
    if args.action == "authority":
        from tsfl.identity import IdentityAuthority

        if Path(args.out).exists() and not args.force:
            err.print(f"[bold red]error:[/] {args.out} exists (--force replaces it)",
                      highlight=False)
            return 2
        ca = IdentityAuthority.generate()
        ca.save(args.out)
        out.print(ca.public_key.hex(), highlight=False)
        err.print(f"identity authority: {args.out} (keep it off the server), public key "
                  f"{args.out}.pub", highlight=False)
        return 0
    if not args.job or not args.authority:
        err.print("[bold red]error:[/] tsfl keys init needs JOB.yaml and --authority",
                  highlight=False)
        return 2
    from tsfl.config import ConfigError, load_job
    from tsfl.he import HeError, SecretKeySet
    from tsfl.he.job import he_params
    from tsfl.identity import IdentityError, read_authority_public
    from tsfl.runtime.simulation import initial_model

    try:
        spec = load_job(args.job)
        if spec.crypto.mode != "he":
            raise HeError("params", f"{args.job} does not use crypto.mode he")
        authority = read_authority_public(args.authority)
        layout, _ = initial_model(spec)
        keys = SecretKeySet(he_params(spec, layout))
    except (ConfigError, HeError, IdentityError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    out_dir = Path(args.out)
    if (out_dir / "secret.key").exists() and not args.force:
        err.print(f"[bold red]error:[/] {out_dir}/secret.key exists (a key set per job; "
                  "--force replaces it)", highlight=False)
        return 2
    public, secret = keys.write(out_dir)
    raw = json.loads(public.read_text())
    raw["authority"] = [authority.hex()]  # whose certificates sign the devices' sections
    public.write_text(json.dumps(raw, indent=2) + "\n")
    p = keys.params
    out.print(keys.key_id, highlight=False)
    err.print("a shared key set (crypto.he.keying: shared, trusted silos; tsfl job submit "
              "--he-keys sets it). ", end="", highlight=False)
    err.print(f"CKKS N={p.poly_degree}, q {p.prime_bits} bits, scale 2^{p.scale_bits}, "
              f"{p.security}-bit security. Public part (for the coordinator: tsfl job submit "
              f"--he-keys {out_dir}): {public}. Secret key (devices only: tsfl devices "
              f"--he-keys {out_dir}): {secret}", highlight=False)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="HE keys: tsfl keys init JOB.yaml --out DIR "
                                       "--authority CA.pub; tsfl keys authority --out CA.key")
    keys.add_argument("action", choices=["init", "authority"])
    keys.add_argument("job", nargs="?", help="init: the job spec (crypto.mode he, keying "
                                             "shared) the keys are for")
    keys.add_argument("--out", required=True, help="init: directory for public.json and "
                                                   "secret.key; authority: the key file")
    keys.add_argument("--force", action="store_true", help="replace an existing key set")
    keys.add_argument("--authority",
                      help="the identity authority (public key, hex or .pub file) whose "
                           "device certificates sign encrypted sections")
    keys.set_defaults(func=cmd_keys)
