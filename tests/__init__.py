"""
appnet's own tests (trial): unit/, integration/ (loopback), interop/ (third-party peers).
"""

from hypothesis import HealthCheck, settings

# Property tests assert behaviour, never speed: on a loaded 2-core CI machine a
# slow example must not fail with DeadlineExceeded or a too_slow health check.
settings.register_profile(
    "appnet", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("appnet")
