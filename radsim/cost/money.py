"""Money: rental cost of the devices for the time they are held, plus the electricity they draw.

Cloud rental prices usually include power; set `electricity_usd_per_kWh` to 0 to price rental only,
or the rental price near zero (owned hardware) to price electricity only.
"""

from __future__ import annotations

from dataclasses import dataclass

from radsim.errors import ConfigError
from radsim.spec.hardware import Hardware

# US average retail electricity price to industrial customers, 2024: 8.1 cents/kWh
# (U.S. Energy Information Administration, Electric Power Monthly, Table 5.3).
DEFAULT_ELECTRICITY_USD_PER_KWH = 0.081
J_PER_KWH = 3.6e6
S_PER_HOUR = 3600.0


@dataclass(frozen=True)
class Pricing:
    """What a device-hour and a kilowatt-hour cost."""

    electricity_usd_per_kWh: float = DEFAULT_ELECTRICITY_USD_PER_KWH

    def __post_init__(self) -> None:
        if self.electricity_usd_per_kWh < 0:
            raise ConfigError("electricity_usd_per_kWh must be >= 0")

    def cost_usd(self, hw: Hardware, devices: int, time_s: float, energy_J: float) -> float:
        """Rental of `devices` for `time_s` plus the electricity of `energy_J` (all devices)."""
        rental = hw.price_usd_per_hour * devices * time_s / S_PER_HOUR
        return rental + energy_J / J_PER_KWH * self.electricity_usd_per_kWh
