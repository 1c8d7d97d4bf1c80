"""Label vocabularies shared by every module (SPEC §0)."""

EMOTIONS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
POSITIVE = frozenset(EMOTIONS[:4])
BINARY = ("positive", "negative")


def emotion_index(name: str) -> int:
    """Index of an emotion name in the canonical EmoSet order."""
    from uniemo.errors import UniEmoError

    key = name.strip().lower()
    if key not in EMOTIONS:
        raise UniEmoError(f"unknown emotion {name!r}: choose one of {', '.join(EMOTIONS)}")
    return EMOTIONS.index(key)


def to_binary(emotion: int) -> int:
    """The 8 -> 2 map: amusement..excitement are positive (0), anger..sadness negative (1)."""
    return 0 if emotion < 4 else 1


def normalise_attribute(name: str) -> str:
    """'bakery/shop' -> 'bakery shop', 'Alarm clock' -> 'alarm clock': the text we encode."""
    return " ".join(name.replace("_", " ").replace("/", " ").lower().split())
