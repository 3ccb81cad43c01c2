"""The one place that decides which ffmpeg and ffprobe binaries run."""

from __future__ import annotations

import os
import shutil

from epicdata.errors import FFmpegNotFoundError


def _find(tool: str, env_var: str) -> str:
    override = os.environ.get(env_var)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        found = shutil.which(override)
        if found:
            return found
        raise FFmpegNotFoundError(
            f"${env_var}={override!r} is not an executable {tool}; "
            f"point ${env_var} at the {tool} binary or unset it to use {tool} from PATH"
        )
    found = shutil.which(tool)
    if found:
        return found
    raise FFmpegNotFoundError(
        f"{tool} not found: set ${env_var} to the {tool} binary, or put {tool} on PATH "
        f"(on VSC clusters: `module load FFmpeg`; on Debian/Ubuntu: `apt-get install ffmpeg`)"
    )


def ffmpeg_path() -> str:
    """Path of ffmpeg: ``$EPIC_FFMPEG`` if set, else ``ffmpeg`` on PATH."""
    return _find("ffmpeg", "EPIC_FFMPEG")


def ffprobe_path() -> str:
    """Path of ffprobe: ``$EPIC_FFPROBE`` if set, else ``ffprobe`` on PATH."""
    return _find("ffprobe", "EPIC_FFPROBE")
