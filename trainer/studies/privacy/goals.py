"""The issue's targets, checked against a result document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    name: str
    measured: float
    target: float
    at_most: bool  # True: measured <= target passes; False: measured >= target

    @property
    def met(self) -> bool:
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    @property
    def shortfall(self) -> float:
        """How far the measurement is on the wrong side of the target (0 when met)."""
        gap = self.measured - self.target if self.at_most else self.target - self.measured
        return max(0.0, gap)

    def as_dict(self) -> dict[str, Any]:
        return {
            "goal": self.name,
            "measured": self.measured,
            "target": self.target,
            "at_most": self.at_most,
            "met": self.met,
            "shortfall": self.shortfall,
        }


def check(result: dict[str, Any]) -> list[Goal]:
    sn = result["image_metrics"]["rllfpr"]
    goals = [
        Goal(f"Fuzziness2 (s = {key.removeprefix('fuzziness2_s')})", sn[key], 0.80, False)
        for key in sn
        if key.startswith("fuzziness2_s")
    ]
    goals.append(Goal("Fuzziness3", sn["fuzziness3"], 0.997, False))
    goals += [
        Goal(f"|adjacent correlation|, {direction}", abs(value), 0.1, True)
        for direction, value in sn["adjacent_correlation"].items()
    ]
    goals.append(
        Goal(
            "machine 4-choice match",
            result["questionnaire"]["rllfpr"]["match_accuracy"],
            0.30,
            True,
        )
    )
    own_key = result["inversion"]["b_own_key"]
    leakage = own_key["identity_leakage"]
    goals += [
        Goal("inversion, attacker's own key: SSIM", own_key["ssim"], 0.2, True),
        Goal(
            "inversion, attacker's own key: identity leakage / chance",
            leakage["accuracy"] / leakage["chance"],
            2.0,
            True,
        ),
        Goal(
            "D<->sys across keys (worst comparator)",
            max(
                link["d_sys"]
                for name, link in result["unlinkability"].items()
                if name.endswith("keys_a_b")
            ),
            0.1,
            True,
        ),
    ]
    return goals
