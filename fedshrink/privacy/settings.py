"""Settings of client-level differential privacy (DP-FedAvg, adaptive clipping, the accountant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.errors import ConfigError
from fedshrink.settings import Section, at_least, between, greater_than, one_of, option

MODES = ("off", "central", "distributed")
AT_TARGET = ("warn", "stop")


@dataclass(frozen=True)
class PrivacySettings(Section):
    title: ClassVar[str] = "privacy"

    dp_mode: str = option(
        "off", "client-level differential privacy: `off`; `central` (clients clip, the server adds Gaussian noise: "
        "a trusted server); `distributed` (clients clip and add their share of the noise before compression)",
        rule=one_of(MODES))
    dp_clip: float = option(1.0, "L2 bound C of a client's update over the coordinates it holds (the starting "
                            "bound when dp-clip-quantile is set)", rule=greater_than(0))
    dp_clip_quantile: float = option(
        0.0, "adaptive clipping (Andrew et al. 2021): the share of clients whose update should fit the bound",
        rule=between(0, 1, hi_open=True).noting("0 = the fixed bound dp-clip"))
    dp_clip_lr: float = option(0.2, "adaptive clipping: learning rate eta of C <- C exp(-eta (b - quantile))",
                               rule=greater_than(0))
    dp_count_noise: float = option(
        0.0, "adaptive clipping: std of the noise on the count of clients within the bound",
        rule=at_least(0).noting("0 = clients per round / 20, as in the paper"))
    dp_noise_multiplier: float = option(
        1.0, "z: noise std over the bound C (std z C on the sum of clipped updates); 0 with a "
        "dp-target-epsilon: calibrated so that num-server-rounds rounds spend it; 0 without: no noise "
        "(clipping only, epsilon infinite)", rule=at_least(0))
    dp_target_epsilon: float = option(0.0, "privacy budget: epsilon at dp-delta", rule=at_least(0).noting("0 = none"))
    dp_delta: float = option(0.0, "delta of the guarantee",
                             rule=between(0, 1, hi_open=True).noting("0 = 1 / number of clients"))
    dp_at_target: str = option("warn", "when the next round would pass dp-target-epsilon: `warn` and go on, or "
                               "`stop` the run before it", rule=one_of(AT_TARGET))
    dp_reproducible_noise: bool = option(
        False, "draw the noise from the run's seed (reproducible simulations; anyone with the seed can remove it, "
        "so there is no privacy); false: from the operating system's entropy")

    @property
    def enabled(self) -> bool:
        return self.dp_mode != "off"

    @property
    def adaptive(self) -> bool:
        return self.dp_clip_quantile > 0

    def check_with(self, *, defence: str, norm_guard: float, pruned_as_zero: bool) -> None:
        """Rules with other sections: the noise is calibrated to the plain mean over holders of clipped updates.

        A robust rule, a screen that drops replies by their values, or a
        pruned weight counted as the value ``-global`` (not the client's data,
        but counted as a holder) would break that calibration.
        """
        if not self.enabled:
            return
        if defence != "none":
            raise ConfigError("defence", defence, "'none' when dp-mode is not 'off' (the noise is calibrated to the "
                              "mean of clipped updates)")
        if norm_guard > 0:
            raise ConfigError("norm-guard", norm_guard, "0 when dp-mode is not 'off' (a screen that drops replies by "
                              "their values changes who counts as a holder)")
        if pruned_as_zero:
            raise ConfigError("pruned-as-zero", True, "false when dp-mode is not 'off' and a profile-mix is set (a "
                              "pruned weight is not a held coordinate of the clipped update)")
