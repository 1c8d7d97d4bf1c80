"""Label vocabularies shared by every module (SPEC §0)."""

EMOTIONS = ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness")
POSITIVE = frozenset(EMOTIONS[:4])
BINARY = ("positive", "negative")

# the classes of each dataset kind stored as class folders, in label order ("folder": the sorted
# subfolder names); EmoSet names its own
FOLDER_CLASSES: dict[str, tuple[str, ...] | None] = {
    "fi": EMOTIONS,
    "emotionroi": ("anger", "disgust", "fear", "joy", "sadness", "surprise"),
    "twitter1": BINARY,
    "twitter2": BINARY,
    "folder": None,
}
KINDS = ("emoset", *FOLDER_CLASSES)  # what every command's --dataset takes
SPLITS = ("train", "val", "test")


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

# (valence, arousal) of each emotion word on the 1-9 scales of Warriner, Kuperman & Brysbaert
# (2013), "Norms of valence, arousal, and dominance for 13,915 English lemmas", Behavior Research
# Methods 45:1191-1207: columns V.Mean.Sum and A.Mean.Sum of the noun naming each EmoSet emotion.
VALENCE_AROUSAL = {
    "amusement": (7.00, 4.82), "awe": (6.85, 3.83), "contentment": (6.62, 4.60), "excitement": (7.62, 6.21),
    "anger": (2.50, 5.93), "disgust": (3.32, 5.00), "fear": (2.93, 6.14), "sadness": (2.40, 2.81),
}
