"""Word lists the resolver relies on: pronouns, person nouns, class words inside names.

Kept apart from resolve.py so that the rules read without the vocabulary in the way.
This module must never import spaCy.
"""

from __future__ import annotations

# pronoun -> (plural, person (None = either), possessive)
PRONOUNS: dict[str, tuple[bool, bool | None, bool]] = {
    "it": (False, False, False), "itself": (False, False, False), "its": (False, False, True),
    "they": (True, None, False), "them": (True, None, False), "themselves": (True, None, False),
    "their": (True, None, True),
    "he": (False, True, False), "him": (False, True, False), "himself": (False, True, False),
    "his": (False, True, True), "she": (False, True, False), "herself": (False, True, False),
    "her": (False, True, False),
}
DEMONSTRATIVES = {"this", "that", "these", "those"}
NUMERIC = {"DATE", "TIME", "CARDINAL", "QUANTITY", "PERCENT", "MONEY", "ORDINAL"}
NAMED = {"PERSON", "GPE", "LOC", "ORG", "FAC", "NORP", "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE"}
PERSON_NOUNS = {
    "man", "woman", "person", "engineer", "chemist", "musician", "king", "queen", "emperor", "empress", "president",
    "leader", "writer", "author", "poet", "artist", "scientist", "inventor", "founder", "glassmaker", "captain",
    "player", "minister", "general", "hero", "chancellor", "architect", "painter", "composer", "singer", "actor",
    "actress", "politician", "explorer", "monk", "priest", "bishop", "pope", "duke", "archduke", "prince",
    "princess", "father", "mother", "son", "daughter", "wife", "husband", "teacher", "student", "doctor", "lawyer",
    "soldier", "physicist", "mathematician", "philosopher", "historian", "designer", "director", "governor", "mayor",
    "ruler", "sculptor", "novelist", "farmer", "merchant", "sailor", "pilot", "chef", "baker", "coach", "manager",
    "keeper", "sister", "brother", "grandson", "granddaughter", "grandfather", "grandmother", "uncle", "aunt",
    "nephew", "niece", "cousin", "countess", "baron", "baroness", "knight", "abbot", "abbess", "nun", "athlete",
    "mountaineer", "engraver", "surveyor", "astronomer", "runner", "swimmer", "skier", "boxer", "wrestler",
    "footballer", "cricketer", "sprinter", "rower", "dancer", "banker", "businessman", "businesswoman", "entrepreneur",
    "diplomat", "judge", "senator", "statesman", "nurse", "editor", "publisher", "drummer", "officer", "admiral",
    "colonel", "lieutenant", "sergeant", "commander", "saint", "missionary", "screenwriter", "songwriter",
}
# occupations the list does not name: "watchmaker", "herpetologist", "goldsmith", "pianist" (not "checklist"; not a
# bare "maker", which firms are too)
_PERSON_SUFFIXES = ("maker", "smith", "wright", "logist", "ician", "grapher", "monger", "ist")
_NOT_PERSON = {"checklist", "playlist", "shortlist", "wishlist", "blacklist", "whitelist", "exist", "assist", "insist",
               "resist", "persist", "consist", "schist", "amethyst"}


def person_noun(lemma: str) -> bool:
    """Whether a common noun's lemma names a kind of person ("engineer", "watchmaker", "herpetologist")."""
    return lemma in PERSON_NOUNS or (len(lemma) > 6 and lemma.endswith(_PERSON_SUFFIXES) and lemma not in _NOT_PERSON)
# words inside a proper name that say what kind of thing it is ("Lake Constance" is a lake)
GENERIC = {
    "lake", "river", "sea", "ocean", "bridge", "gorge", "valley", "delta", "canal", "mountain", "mountains", "island",
    "bay", "city", "town", "village", "county", "state", "province", "university", "company", "museum", "church",
    "castle", "fort", "fortress", "bank", "street", "square", "park", "port", "hill", "forest", "desert", "plain",
    "basin", "falls", "strait", "channel", "glacier", "peninsula", "cape", "dam", "tower", "palace", "cathedral",
    "school", "college", "hospital", "station", "airport", "club", "team", "party", "empire", "kingdom", "republic",
    "treaty", "war", "battle", "festival", "fair", "lighthouse", "region", "area", "district", "line", "fault",
    "graben", "embayment", "culture", "confederation", "crisis", "operation", "acid", "light", "cup", "dome",
    "arena", "museum", "prize", "award", "institute", "society", "council", "army", "legion", "canton", "land",
}
# what a definite description may call a named entity of each type ("the company" for an ORG)
LABEL_CLASSES = {
    "GPE": {"city", "town", "country", "state", "nation", "village", "capital", "municipality"},
    "ORG": {"company", "organization", "organisation", "firm", "club", "team", "band", "group", "corporation",
            "institution", "university", "party", "society"},
    "FAC": {"bridge", "building", "airport", "tower", "station", "museum", "dam", "canal", "stadium", "arena"},
}
PARTITIVE = {"most", "part", "all", "some", "much", "many", "one", "half", "majority", "rest", "each", "none", "both"}
# nouns that name no thing a pronoun later points back to
NOT_ENTITIES = PARTITIVE | {"number", "amount", "lot", "kind", "type", "sort", "way", "time", "case", "fact", "use",
                            "result", "end", "beginning", "side", "degree", "variety", "range", "series", "couple",
                            "pair", "total", "deal", "addition", "example", "instance", "thing", "something"}
# abstract measures own nothing: "its main competitor" is not the revenue's
MEASURE_NOUNS = {"revenue", "cost", "price", "rate", "level", "length", "width", "height", "depth", "area",
                 "population", "size", "value", "share", "output", "income", "profit", "discharge", "volume",
                 "speed", "temperature", "weight", "distance", "number", "amount", "total", "percentage"}
# nouns that, as a bare definite subject in an article about a named thing, are that thing's: "The first winner was
# ..." in the Orrery Prize's article is the prize's first winner
RELATIONAL = {"winner", "founder", "population", "source", "mouth", "headquarters", "summit", "owner", "director",
              "chairman", "president", "name", "capital", "copy", "manuscript", "tower", "station", "keeper",
              "building", "site", "entrance", "interior", "roof", "spire", "rector", "mayor", "dean", "chancellor",
              "principal", "curator", "captain", "coach", "library", "campus", "defeat", "victory", "outcome", "port",
              "harbour", "airport"}
# weather as a subject in an article about a place: "Summers are cool" in Holmstad's article is Holmstad's summers
CLIMATE_NOUNS = {"summer", "winter", "spring", "autumn", "snow", "rain", "rainfall", "snowfall", "frost", "fog"}
# life stages, sexes and plant organs: as a plural subject ("Adults are 21 mm long", "The flowers are yellow") in an
# article about an organism, they are that organism's
LIFE_STAGES = {"adult", "male", "female", "juvenile", "larva", "tadpole", "egg", "nymph", "pupa", "caterpillar",
               "hatchling", "chick", "calf", "cub", "froglet", "seedling", "fledgling", "flower", "leaf", "seed",
               "fruit", "spore"}
# parts of an animal or plant: "The crest is pale grey" in a bird's article is the bird's crest
BODY_PARTS = {"crest", "bill", "beak", "wing", "tail", "plumage", "feather", "fur", "coat", "shell", "skin", "head",
              "leg", "eye", "fin", "scale", "horn", "antler", "mane", "snout", "bark", "stem", "root", "trunk",
              "petal", "cone", "needle", "body", "belly", "throat", "breast", "claw", "tooth", "teeth", "venom",
              "call", "song", "nest", "diet", "range", "habitat", "lifespan", "wingspan"}
# "the species" in an article about an organism is that organism (it names no class an entity was given)
TAXON_NOUNS = {"species", "subspecies", "genus"}
# what an organism's article calls the organism itself ("The plant grows to 45 centimetres"), in such an article only
ORGANISM_NOUNS = {"plant", "animal", "bird", "fish", "tree", "shrub", "frog", "insect", "mammal", "reptile", "snake",
                  "butterfly", "moth", "beetle", "spider", "fungus", "orchid", "seabird"}
# passive participles that describe a state rather than something done to a patient: "It is known for being flat"
# after "The course ... crosses the Old Bridge" says what the course is like (the resolver's parallel-roles bonus for a
# patient of the last sentence, "a flood destroyed the wall. It was rebuilt", is for the other kind)
STATIVE_PASSIVES = {"know", "consider", "regard", "call", "name", "locate", "situate", "believe", "think", "say",
                    "describe", "base", "make", "compose", "associate", "note", "list", "class", "classify",
                    "categorise", "categorize", "rank", "see", "view", "famed", "nickname", "dub", "title", "term"}
# section headings of encyclopedic articles that name a part of the article, not a thing the section is about
# ("## Organisation", "## Description"): a one-word heading is often tagged a proper noun
GENERIC_HEADINGS = {
    "history", "geography", "etymology", "description", "biography", "career", "death", "legacy", "organisation",
    "organization", "campus", "status", "breeding", "distribution", "habitat", "ecology", "behaviour", "behavior",
    "taxonomy", "diet", "uses", "properties", "economy", "demographics", "culture", "education", "transport",
    "climate", "government", "politics", "religion", "sport", "sports", "overview", "background", "aftermath",
    "reception", "discography", "works", "awards", "honours", "honors", "structure", "design", "construction",
    "operations", "services", "facilities", "location", "population", "architecture", "tourism", "gallery",
    "conservation", "appearance", "name", "names", "origin", "origins", "production", "composition", "occurrence",
    "synthesis", "applications", "safety", "research", "academics", "administration", "athletics", "alumni",
    "rankings", "management", "products", "subsidiaries", "members", "membership", "format", "rules", "results",
    "records", "venue", "teams", "players", "stadium", "media", "bibliography", "publications", "themes", "plot",
    "characters", "adaptations", "references", "notes", "summary", "introduction", "features", "course", "route",
}
# a title before a name says the name is a person's, and which gender: "Queen Maren of Tiel" is no "his"
FEMALE_TITLES = {"queen", "princess", "duchess", "countess", "lady", "dame", "empress", "baroness", "abbess", "mrs",
                 "madame", "archduchess", "tsarina"}
MALE_TITLES = {"king", "prince", "duke", "count", "lord", "sir", "emperor", "baron", "abbot", "mr", "archduke", "tsar",
               "sultan", "pharaoh"}
# one kind of place: "the town" in an article on a city is the city
SETTLEMENTS = {"town", "city", "village", "municipality", "settlement", "borough"}
# one kind of craft: "the ship" in an article on a ferry is the ferry, and "she" may be it
VESSELS = {"ship", "ferry", "vessel", "boat", "steamer", "liner", "yacht", "schooner", "frigate", "tanker",
           "freighter", "submarine", "cruiser", "battleship", "destroyer", "barque", "brig", "sloop", "galleon",
           "icebreaker", "trawler", "steamship"}
CLASS_FAMILIES = (SETTLEMENTS, VESSELS)
# made things a title names ("The Grey Harbour is a 1958 drama film"): a definition by one of these says the topic is
# no person, whatever the tagger guessed from its name
WORKS = {"film", "movie", "novel", "book", "album", "song", "single", "play", "opera", "poem", "painting", "sculpture",
         "symphony", "musical", "series", "magazine", "newspaper", "game", "documentary", "ballet", "novella", "cycle"}
# sections that list sources and links, not facts ("## See also", a plain-text "References" line); not "Notes" or
# "Sources", which may be a document of notes or a river's sources
BACK_MATTER = {"see also", "references", "external links", "further reading", "bibliography", "citations",
               "footnotes", "notes and references", "references and notes", "works cited"}
