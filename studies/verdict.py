"""The study's answer from its images' answers, by one rule stated in plain words.

An image is positive when its own answer is COVID: one model's probability at or above
that model's threshold, or, with several models, the mean margin rule of the single
image API. The study is COVID when enough images are positive, counted two ways:
consecutive slices of one CT series (lesions span neighbouring slices, a stray false
positive rarely does), or a share of all images (which also serves sets of X-rays,
whose order means nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.predict import COVID, NON_COVID

RULE_ID = "consecutive_or_share"


@dataclass(frozen=True)
class StudyRule:
    min_run: int = 5  # consecutive positive slices of one CT series
    min_share: float = 0.25  # share of all analysed images

    def describe(self, modality: str) -> str:
        share = f"{self.min_share * 100:g} %"
        if modality == "ct":
            return (f"COVID if at least {self.min_run} consecutive slices of one series, or "
                    f"at least {share} of all images, are positive; an image is positive "
                    f"when its answer is COVID at each model's own threshold.")
        return (f"COVID if at least {share} of the images are positive; an image is "
                f"positive when its answer is COVID at each model's own threshold.")


@dataclass(frozen=True)
class ImageAnswer:
    """What the rule needs of one analysed image, in reading order."""

    series_uid: str | None
    covid_probability: float
    positive: bool


def longest_run(answers: list[ImageAnswer]) -> int:
    """The most consecutive positive images within one series."""
    best = run = 0
    previous_series = object()
    for answer in answers:
        if answer.series_uid != previous_series:
            run, previous_series = 0, answer.series_uid
        run = run + 1 if answer.positive else 0
        best = max(best, run)
    return best


def study_verdict(answers: list[ImageAnswer], modality: str, rule: StudyRule) -> dict:
    """The study's label with the figures behind it (None-free, JSON-ready)."""
    total = len(answers)
    positive = sum(1 for a in answers if a.positive)
    run = longest_run(answers) if modality == "ct" else 0
    share = positive / total if total else 0.0
    is_covid = total > 0 and (share >= rule.min_share
                              or (modality == "ct" and run >= rule.min_run))
    mean = sum(a.covid_probability for a in answers) / total if total else 0.0
    return {
        "label": COVID if is_covid else NON_COVID,
        "covid_probability": round(mean, 6),
        "positive_images": positive,
        "total_images": total,
        "positive_share": round(share, 6),
        "longest_positive_run": run,
        "rule": rule.describe(modality),
        "rule_id": RULE_ID,
        "rule_parameters": {"min_run": rule.min_run, "min_share": rule.min_share},
    }
