"""The entry point of ``offloader`` and ``python -m offloader``: stops are held before the first heavy import."""

from offloader import stops


def main() -> None:
    stops.hold()
    from offloader.cli import entrypoint

    entrypoint()


if __name__ == "__main__":
    main()
