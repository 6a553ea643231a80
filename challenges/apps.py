from django.apps import AppConfig


class ChallengesConfig(AppConfig):
    name = "challenges"
    verbose_name = "Token challenges"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
