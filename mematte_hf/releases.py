"""The checkpoints the MEMatte authors released, with the scores they published (github.com/linyiheng123/MEMatte).

`mematte convert --release NAME` checks the checkpoint's architecture against the release and records it, so the
model card can show the authors' scores, labelled as reported by them, apart from scores measured with
`mematte evaluate`. Scores are in the published tables' units: SAD, Grad and Conn / 1000, MSE x 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTHORS_PAGE = "https://github.com/linyiheng123/MEMatte"
_BACKBONES = {384: "ViT-S", 768: "ViT-B"}


@dataclass(frozen=True)
class Release:
    """One released checkpoint: what it is, what it was trained for, and where the authors host it."""

    name: str
    title: str
    hidden_size: int
    dataset: str
    scores: dict[str, float]
    drive_id: str

    @property
    def backbone(self) -> str:
        return _BACKBONES[self.hidden_size]

    @property
    def download_url(self) -> str:
        return f"https://drive.google.com/file/d/{self.drive_id}/view"


RELEASES = {
    release.name: release
    for release in (
        Release(
            name="vits-composition1k",
            title="MEMatte ViT-S trained on Composition-1K",
            hidden_size=384,
            dataset="Composition-1K",
            scores={"sad": 21.90, "mse": 3.37, "grad": 7.43, "conn": 16.77},
            drive_id="122p3sdhJVb7vg4IXELeC9C3HEG9Mlh5z",
        ),
        Release(
            name="vitb-composition1k",
            title="MEMatte ViT-B trained on Composition-1K",
            hidden_size=768,
            dataset="Composition-1K",
            scores={"sad": 21.06, "mse": 3.11, "grad": 6.70, "conn": 15.71},
            drive_id="1NOV64zMSFtoKPASqvEvxQKI_PRY9m5IA",
        ),
        Release(
            name="vits-realworld",
            title="MEMatte ViT-S trained on mixed data for real-world images",
            hidden_size=384,
            dataset="AIM-500",
            scores={"sad": 13.90, "mse": 11.17, "grad": 10.94, "conn": 12.78},
            drive_id="1R5NbgIpOudKjvLz1V9M9SxXr1ovAmu3u",
        ),
    )
}
