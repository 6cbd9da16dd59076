"""Word lists the built-in tasks draw from. Each list is longer than a task needs: a tokenizer keeps
only the words that are single tokens for it, and a task needs only a handful of them."""

NAMES = [
    "Mary", "John", "Alice", "Bob", "Sarah", "James", "Emma", "David", "Laura", "Michael", "Anna", "Paul",
    "Kate", "Mark", "Lisa", "Peter", "Rachel", "Tom", "Julia", "Daniel", "Helen", "Steve", "Amy", "Robert",
    "Linda", "Chris", "Grace", "Eric", "Rose", "Frank", "Jane", "Henry", "Lucy", "Adam", "Claire", "Sam",
    "Ruth", "Kevin", "Anne", "Jack",
]
PLACES = [
    "store", "park", "school", "office", "beach", "garden", "station", "hospital", "market", "library",
    "restaurant", "church", "house", "river", "museum", "bank", "hotel", "farm", "lake", "airport",
]
OBJECTS = [
    "drink", "book", "ball", "key", "letter", "gift", "ring", "bag", "phone", "bottle", "card", "basket",
    "pen", "box", "hat", "map", "cake", "flower", "coin", "note",
]

# greater-than: events that last from one year to another
EVENTS = [
    "war", "siege", "reign", "drought", "famine", "revolt", "voyage", "trial", "expedition", "rebellion",
    "occupation", "blockade", "strike", "journey", "conflict", "campaign", "dispute", "crisis",
]

# subject-verb agreement: (singular, plural) subjects and attractors, and (singular, plural) verbs
NOUN_PAIRS = [
    ("author", "authors"), ("doctor", "doctors"), ("teacher", "teachers"), ("dog", "dogs"), ("cat", "cats"),
    ("boy", "boys"), ("girl", "girls"), ("friend", "friends"), ("farmer", "farmers"), ("student", "students"),
    ("king", "kings"), ("pilot", "pilots"), ("manager", "managers"), ("officer", "officers"),
    ("player", "players"), ("writer", "writers"), ("worker", "workers"), ("driver", "drivers"),
    ("painter", "painters"), ("singer", "singers"), ("lawyer", "lawyers"), ("nurse", "nurses"),
]
VERB_PAIRS = [("is", "are"), ("was", "were"), ("has", "have")]
PREPOSITIONS = ["near", "behind", "beside", "with", "of", "like"]

# capital-country: (country, capital)
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("Greece", "Athens"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Portugal", "Lisbon"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Thailand", "Bangkok"), ("Turkey", "Ankara"), ("Hungary", "Budapest"),
    ("Belgium", "Brussels"), ("Vietnam", "Hanoi"), ("Chile", "Santiago"),
]

# docstring: argument names, function names and filler words for descriptions
ARG_NAMES = [
    "file", "size", "name", "data", "path", "mode", "key", "value", "index", "count", "text", "user", "line",
    "node", "item", "port", "host", "color", "width", "height", "label", "token", "state", "source", "target",
    "limit", "offset", "query", "result", "config",
]
FUNCTION_NAMES = ["load", "parse", "update", "create", "check", "render", "send", "build", "fetch", "merge"]
FILLER = [
    "the", "new", "old", "first", "last", "main", "local", "given", "current", "default", "final", "total",
    "number", "list", "object", "field", "string", "record", "entry", "table",
]
