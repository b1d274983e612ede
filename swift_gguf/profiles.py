"""Skip profiles: what the search learned about one model on one backend, kept on disk.

A profile is a small versioned JSON file in the user cache directory, keyed by the
model file's identity (size and a hash of its first 4 MiB, where GGUF keeps its
header and metadata) and the backend. A corrupt, truncated or mismatched profile
is ignored with a warning; writes are atomic, so concurrent writers never leave a
half-written file.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .costmodel import Costs
from .fileio import atomic_write_text
from .paths import profiles_dir
from .search import SearchConfig, SearchState
from .skipset import SkipSet

VERSION = 1
_HEAD = 4 << 20


def model_identity(path: str | Path) -> str:
    """A short, stable identity of a model file that does not read the whole file."""
    p = Path(path)
    h = hashlib.sha256(str(p.stat().st_size).encode())
    with open(p, "rb") as f:
        h.update(f.read(_HEAD))
    return h.hexdigest()[:20]


def profile_path(model_id: str, backend: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in backend)
    return profiles_dir() / f"{model_id}-{safe}.json"


@dataclass
class Profile:
    model_id: str
    backend: str
    model_name: str
    state: SearchState
    costs: Costs
    found_by: str = "on-the-fly search"

    def to_json(self) -> dict:
        st = self.state
        return {
            "version": VERSION,
            "model": {"id": self.model_id, "name": self.model_name, "n_layer": st.n_layer},
            "backend": self.backend,
            "skip": st.best.to_json() if st.best is not None else None,
            "matchness": round(st.best_matchness, 4),
            "predicted_speedup": round(st.best_predicted, 4),
            "draft_length": st.best_draft_length,
            "probes": st.probes,
            "round_probes": st.round_probes,
            "search_done": st.done,
            "search_seconds": round(st.seconds, 3),
            "importance": [None if x != x else round(x, 6) for x in st.importance],
            "costs": self.costs.to_json(),
            "found_by": self.found_by,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    @classmethod
    def from_json(cls, d: dict, config: SearchConfig | None = None) -> "Profile":
        n_layer = int(d["model"]["n_layer"])
        st = SearchState(n_layer, config or SearchConfig())
        st.importance = [float("nan") if x is None else float(x) for x in d["importance"]]
        if d.get("skip"):
            st.best = SkipSet.from_lists(n_layer, d["skip"]["attention"], d["skip"]["ffn"])
            st.best_matchness = float(d["matchness"])
            st.best_predicted = float(d["predicted_speedup"])
            st.best_draft_length = int(d.get("draft_length", 1))
        st.probes = int(d["probes"])
        st.round_probes = int(d.get("round_probes", 0))   # absent before rounds were counted
        st.done = bool(d["search_done"])
        st.seconds = float(d.get("search_seconds", 0.0))
        st.__post_init__()
        return cls(d["model"]["id"], d["backend"], d["model"].get("name", ""), st,
                   Costs.from_json(d["costs"]), d.get("found_by", "on-the-fly search"))


def load(path: Path, model_id: str, backend: str, n_layer: int,
         config: SearchConfig | None = None) -> Profile | None:
    """The profile at path if it is valid and belongs to this model and backend, else None."""
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if d.get("version") != VERSION:
            raise ValueError(f"version {d.get('version')!r}, expected {VERSION}")
        prof = Profile.from_json(d, config)
        if prof.model_id != model_id or prof.backend != backend or prof.state.n_layer != n_layer:
            raise ValueError("it belongs to another model or backend")
        return prof
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring skip profile {path}: {e}", stacklevel=2)
        return None


def save(path: Path, profile: Profile) -> None:
    atomic_write_text(path, json.dumps(profile.to_json(), indent=1))
