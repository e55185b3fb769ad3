"""CURVE key pairs for robots and the ingest server (ZeroMQ's certificate files).

Layout made by ``vlac keys generate --dir KEYS``::

    KEYS/server/ingest.key          server public key (give it to every robot)
    KEYS/server/ingest.key_secret   server secret key (stays on the ingest host)
    KEYS/robots/<robot>.key         robot public key: this folder is ingest's allow-list
    KEYS/robots/<robot>.key_secret  robot secret key (move it to that robot)

A robot's id is the stem of its certificate's file name. Ingest admits a connection only if
its public key is in the allow-list, and then only accepts messages that carry that id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from vlac.shared.config import check_id as config_check_id
from vlac.shared.config import opt
from vlac.shared.wire import check_id

SERVER_NAME = "ingest"


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


def _generate(folder: Path, name: str, force: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    public = folder / f"{name}.key"
    if public.exists() and (folder / f"{name}.key_secret").exists() and not force:
        return public
    pub, sec = zmq.auth.create_certificates(folder, name)
    Path(sec).chmod(0o600)
    return Path(pub)


def generate(keys_dir: str | Path, robots: list[str], force: bool = False) -> list[Path]:
    """Create the server pair (if missing) and one pair per robot. Existing keys are kept
    unless ``force``. Returns the public key files."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE; install pyzmq's wheel")
    keys_dir = Path(keys_dir)
    made = [_generate(keys_dir / "server", SERVER_NAME, force)]
    for r in robots:
        check_id(r, "robot name")
        made.append(_generate(keys_dir / "robots", r, force))
    return made


def load_pair(secret_file: str | Path) -> KeyPair:
    path = Path(secret_file)
    if not path.exists():
        raise FileNotFoundError(f"key file {path} does not exist; create it with "
                                "`vlac keys generate`")
    pub, sec = zmq.auth.load_certificate(path)
    if sec is None:
        raise ValueError(f"{path} holds no secret key; pass the .key_secret file")
    return KeyPair(pub, sec)


def load_public(public_file: str | Path) -> bytes:
    path = Path(public_file)
    if not path.exists():
        raise FileNotFoundError(f"public key {path} does not exist; copy it from the ingest "
                                "host's KEYS/server/ingest.key")
    pub, _ = zmq.auth.load_certificate(path)
    return pub


def allow_list(robots_dir: str | Path) -> dict[bytes, str]:
    """Public key (z85) -> robot id, for every ``*.key`` in the folder."""
    robots_dir = Path(robots_dir)
    if not robots_dir.is_dir():
        raise FileNotFoundError(f"allow-list folder {robots_dir} does not exist; create it "
                                "with `vlac keys generate --dir KEYS --robots NAME,...`")
    out = {}
    for p in sorted(robots_dir.glob("*.key")):
        pub, _ = zmq.auth.load_certificate(p)
        out[pub] = check_id(p.stem, f"key file {p.name}")
    return out


@dataclass
class KeysConfig:
    dir: Path = opt(Path("keys"), "Folder for the key files (see vlac.shared.keys).")
    robots: list[str] = opt(["robot-0"], "Robot ids to create key pairs for.")
    force: bool = opt(False, "Overwrite existing keys (robots must then be re-enrolled).")

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)
        for r in self.robots:
            config_check_id(r, "robots")


def main(cfg: KeysConfig) -> list[Path]:
    made = generate(cfg.dir, cfg.robots, cfg.force)
    print(f"server public key: {made[0]}  (give it to every robot)")
    print(f"allow-list: {cfg.dir / 'robots'}  ({len(list((cfg.dir / 'robots').glob('*.key')))}"
          " robots); move each <robot>.key_secret to its robot")
    return made
