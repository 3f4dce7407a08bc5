"""Self-contained atoms: each resolution case on a hand-written passage, expected atoms written out.

The atom text is the resolved statement; the span is still the exact source sentence.
"""

import pytest

from doc2atom.atomizer import atomize
from doc2atom.readers import document_from_text

CASES = [
    ("'It' is the document's topic",
     "Velmora", "Velmora is a harbour town on the island of Quessa. It was founded in 1843.",
     [("Velmora is a harbour town on the island of Quessa.", "Velmora is a harbour town on the island of Quessa."),
      ("Velmora was founded in 1843.", "It was founded in 1843.")]),
    ("'She' is the person",
     "Maud Ellery", "Maud Ellery was a Brantish engineer. She designed the Korrin Bridge in 1951.",
     [("Maud Ellery was a Brantish engineer.", "Maud Ellery was a Brantish engineer."),
      ("Maud Ellery designed the Korrin Bridge in 1951.", "She designed the Korrin Bridge in 1951.")]),
    ("'They' is a coordinated subject",
     "Otters", "The Mirefield Otters and the Calder Hawks are rival hockey teams. They have met 212 times.",
     [("The Mirefield Otters and the Calder Hawks are rival hockey teams.",
       "The Mirefield Otters and the Calder Hawks are rival hockey teams."),
      ("The Mirefield Otters and the Calder Hawks have met 212 times.", "They have met 212 times.")]),
    ("a possessive 'Its'",
     "Tarn Light", "The Tarn Light stands on the northern cape. Its lamp is visible for 30 km.",
     [("The Tarn Light stands on the northern cape.", "The Tarn Light stands on the northern cape."),
      ("The Tarn Light's lamp is visible for 30 km.", "Its lamp is visible for 30 km.")]),
    ("'the company' is the named company",
     "Korrin Works", "The Korrin Works is a glass company in Velmora. The company employs 340 people.",
     [("The Korrin Works is a glass company in Velmora.", "The Korrin Works is a glass company in Velmora."),
      ("The Korrin Works employs 340 people.", "The company employs 340 people.")]),
    ("'the river' is the river just defined",
     "Ossel", "The Ossel is a river in Brantwick. The river is 212 km long.",
     [("The Ossel is a river in Brantwick.", "The Ossel is a river in Brantwick."),
      ("The Ossel is 212 km long.", "The river is 212 km long.")]),
    ("'the latter' is the last name",
     "Quessa", "Quessa has two harbours, Velmora and Dask. The latter is larger.",
     [("Quessa has two harbours, Velmora and Dask.", "Quessa has two harbours, Velmora and Dask."),
      ("Dask is larger.", "The latter is larger.")]),
    ("a lead sentence's life dates make the name a person (surname, 'he'); a subject pronoun after a coordinated "
     "clause's subject is that subject",
     "Jan Moll", "Jan Moll (3 March 1860 – 9 May 1931) was a mountaineer. He married Anna Vey in 1892. Their son, "
                 "Karl Moll, became a geologist; he later mapped the Zarn valley. After an accident, Moll gave up "
                 "climbing.",
     [("Jan Moll was born on 3 March 1860.", "3 March 1860"), ("Jan Moll died on 9 May 1931.", "9 May 1931"),
      ("Jan Moll was a mountaineer.", "Jan Moll (3 March 1860 – 9 May 1931) was a mountaineer."),
      ("Jan Moll married Anna Vey in 1892.", "He married Anna Vey in 1892."),
      ("Jan Moll and Anna Vey's son, Karl Moll, became a geologist; he later mapped the Zarn valley.",
       "Their son, Karl Moll, became a geologist; he later mapped the Zarn valley."),
      ("After an accident, Jan Moll gave up climbing.", "After an accident, Moll gave up climbing.")]),
    ("... but not a subject that a matching possessive owns ('Its area ..., and it had')",
     "Quessa", "Quessa is an island in the Gulf of Sarn. Its area is 412 km², and it had 18,300 inhabitants in 2020.",
     [("Quessa is an island in the Gulf of Sarn.", "Quessa is an island in the Gulf of Sarn."),
      ("Quessa's area is 412 km².", "Its area is 412 km²"),
      ("Quessa had 18,300 inhabitants in 2020.", "it had 18,300 inhabitants in 2020.")]),
    ("an 'X of Y' name the parser splits ('the Gulf' + 'of Sarn') is the known name",
     "Gulf of Sarn", "The Gulf of Sarn is an arm of the Northern Sea. Its average depth is 38 m.",
     [("The Gulf of Sarn is an arm of the Northern Sea.", "The Gulf of Sarn is an arm of the Northern Sea."),
      ("The Gulf of Sarn's average depth is 38 m.", "Its average depth is 38 m.")]),
    ("'the capital of the region' is a relation, not a description of a named place",
     "Holmstad", "Holmstad is a port city in Tessaly. With about 95,000 inhabitants, it is both the largest city and the "
                 "capital of the region.",
     [("Holmstad is a port city in Tessaly.", "Holmstad is a port city in Tessaly."),
      ("With about 95,000 inhabitants, Holmstad is both the largest city and the capital of the region.",
       "With about 95,000 inhabitants, it is both the largest city and the capital of the region.")]),
    ("a bare relational subject in an article about a named thing is that thing's ('The first winner')",
     "Orrery Prize", "The Orrery Prize is an award for research in optics. The first winner was the Lumen Institute in "
                     "1952. The Dutch name Rijn is old.",
     [("The Orrery Prize is an award for research in optics.", "The Orrery Prize is an award for research in optics."),
      ("The first winner of the Orrery Prize was the Lumen Institute in 1952.",
       "The first winner was the Lumen Institute in 1952."),
      ("The Dutch name Rijn is old.", "The Dutch name Rijn is old.")]),
    ("a bare surname that is also the first word of a firm's title is the firm in the firm's article; a number the "
     "parser hangs on the name stays",
     "Kessler Instruments", "Kessler Instruments is a maker of marine chronometers. It was founded in 1921 by the "
                            "watchmaker Otto Kessler. By 1935 Kessler supplied chronometers to three navies.",
     [("Kessler Instruments is a maker of marine chronometers.", "Kessler Instruments is a maker of marine chronometers."),
      ("Kessler Instruments was founded in 1921 by the watchmaker Otto Kessler.",
       "It was founded in 1921 by the watchmaker Otto Kessler."),
      ("By 1935 Kessler Instruments supplied chronometers to three navies.",
       "By 1935 Kessler supplied chronometers to three navies.")]),
    ("a stative passive ('is known for') after a sentence with an object describes the last subject, not the object",
     "Fenwater Marathon", "The course starts at Eastgate Park and crosses the Old Bridge twice. It is known for being "
                          "flat.",
     [("The course starts at Eastgate Park.", "The course starts at Eastgate Park"),
      ("The course crosses the Old Bridge twice.", "crosses the Old Bridge twice."),
      ("The course is known for being flat.", "It is known for being flat.")]),
    ("'his' in a clause about a firm is the person beside it, named without his trade ('the watchmaker')",
     "Kessler Instruments", "Kessler Instruments is a maker of marine chronometers. It was founded in 1921 by the "
                            "watchmaker Otto Kessler and his sister Liese, who ran the accounts for forty years.",
     [("Kessler Instruments is a maker of marine chronometers.", "Kessler Instruments is a maker of marine chronometers."),
      ("Kessler Instruments was founded in 1921 by the watchmaker Otto Kessler and his sister Liese.",
       "It was founded in 1921 by the watchmaker Otto Kessler and his sister Liese"),
      ("Otto Kessler's sister Liese ran the accounts for forty years.", "his sister Liese, who ran the accounts for "
                                                                        "forty years.")]),
    ("'the species' in an organism's article is the organism; a bare 'original copy' is the topic's",
     "Marrow glass frog", "The Marrow glass frog is a small frog of the Tessin Range. The species was first described "
                          "in 1998. The original copy of the description is lost.",
     [("The Marrow glass frog is a small frog of the Tessin Range.",
       "The Marrow glass frog is a small frog of the Tessin Range."),
      ("The Marrow glass frog was first described in 1998.", "The species was first described in 1998."),
      ("The original copy of the description is lost.", "The original copy of the description is lost.")]),
    ("... and a bare relational subject ('The original copy') in an article about a named thing is that thing's",
     "Treaty of Ostvale", "The Treaty of Ostvale was signed in 1688. The original copy is kept in Halden.",
     [("The Treaty of Ostvale was signed in 1688.", "The Treaty of Ostvale was signed in 1688."),
      ("The original copy of the Treaty of Ostvale is kept in Halden.", "The original copy is kept in Halden.")]),
    ("a title that the prose writes in lower case is a common noun ('zarnite')",
     "Zarnite", "Zarnite is a blue mineral. The geologist Piet Harrow named it after the Zarn valley. Unlike "
                "velmorite, zarnite dissolves in warm water.",
     [("Zarnite is a blue mineral.", "Zarnite is a blue mineral."),
      ("The geologist Piet Harrow named zarnite after the Zarn valley.",
       "The geologist Piet Harrow named it after the Zarn valley."),
      ("Unlike velmorite, zarnite dissolves in warm water.", "Unlike velmorite, zarnite dissolves in warm water.")]),
    ("'the former' and 'the latter' in one sentence share the last sentence's pair",
     "Trust", "The chairman was Hedda Lindqvist; the engineer was Paul Arden. The former had saved the Harrowgate "
              "Canal, while the latter had rebuilt the Farrow Aqueduct.",
     [("The chairman was Hedda Lindqvist; the engineer was Paul Arden.",
       "The chairman was Hedda Lindqvist; the engineer was Paul Arden."),
      ("Hedda Lindqvist had saved the Harrowgate Canal.", "The former had saved the Harrowgate Canal"),
      ("Paul Arden had rebuilt the Farrow Aqueduct.", "the latter had rebuilt the Farrow Aqueduct.")]),
    ("an elided subject in a clause of its own",
     "Ossel", "The Dornbirner Ach had to be diverted, and it now flows into the lake. Its water is darker than the Ossel.",
     [("The Dornbirner Ach had to be diverted.", "The Dornbirner Ach had to be diverted"),
      ("The Dornbirner Ach now flows into the lake.", "it now flows into the lake."),
      ("The Dornbirner Ach's water is darker than the Ossel.", "Its water is darker than the Ossel.")]),
    ("a headline without a subject is about the topic",
     "Velmora", "Founded in 1843 by Ilse Varn.",
     [("Velmora was founded in 1843 by Ilse Varn.", "Founded in 1843 by Ilse Varn.")]),
    ("'This' pointing at a statement is joined with it",
     "Zarnic acid", "Petra Lindqvist isolated zarnic acid in 1921. This made her famous.",
     [("Petra Lindqvist isolated zarnic acid in 1921.", "Petra Lindqvist isolated zarnic acid in 1921."),
      ("Petra Lindqvist isolated zarnic acid in 1921, and this made Petra Lindqvist famous.",
       "Petra Lindqvist isolated zarnic acid in 1921. This made her famous.")]),
    ("'the company's' is the named company's",
     "Korrin Works", "The Korrin Works is a glass company. The company's best-known product is the thessaloop.",
     [("The Korrin Works is a glass company.", "The Korrin Works is a glass company."),
      ("The Korrin Works' best-known product is the thessaloop.",
       "The company's best-known product is the thessaloop.")]),
    ("a passive subject prefers the last object (parallel roles)",
     "Marn Flats", "In 1953 a storm flood destroyed the sea wall. It was rebuilt in 1955.",
     [("In 1953 a storm flood destroyed the sea wall.", "In 1953 a storm flood destroyed the sea wall."),
      ("The sea wall was rebuilt in 1955.", "It was rebuilt in 1955.")]),
    ("... and the whole an object is part of ('much of the old town')",
     "Brantwick", "On 12 August 1944, a fire destroyed much of the old town. It was rebuilt in the 1950s.",
     [("On 12 August 1944, a fire destroyed much of the old town.",
       "On 12 August 1944, a fire destroyed much of the old town."),
      ("The old town was rebuilt in the 1950s.", "It was rebuilt in the 1950s.")]),
    ("life dates after a name make it a person; a surname alone is the full name",
     "Velmora", "Ilse Varn (1811–1879) founded Velmora. She trained in Dask. Varn died in 1879.",
     [("Ilse Varn (1811–1879) founded Velmora.", "Ilse Varn (1811–1879) founded Velmora."),
      ("Ilse Varn trained in Dask.", "She trained in Dask."),
      ("Ilse Varn died in 1879.", "Varn died in 1879.")]),
    ("'Their guild' becomes a named thing a later 'it' can point at",
     "Marn Flats", "The workers rake the salt into heaps. Their guild was founded in 1410.",
     [("The workers rake the salt into heaps.", "The workers rake the salt into heaps."),
      ("The workers' guild was founded in 1410.", "Their guild was founded in 1410.")]),
    ("life stages as subjects in an organism's article (one that names a species) are the organism's",
     "Marrow glass frog", "The Marrow glass frog is a small frog of the Tessin Range. Adults are 21 to 25 millimetres "
                          "long. Males guard the eggs. The species was first described in 1998.",
     [("The Marrow glass frog is a small frog of the Tessin Range.",
       "The Marrow glass frog is a small frog of the Tessin Range."),
      ("Adults of the Marrow glass frog are 21 to 25 millimetres long.", "Adults are 21 to 25 millimetres long."),
      ("Males of the Marrow glass frog guard the eggs.", "Males guard the eggs."),
      ("The Marrow glass frog was first described in 1998.", "The species was first described in 1998.")]),
    ("... but not in an article about anything else",
     "Mirefield Otters", "The Mirefield Otters are an ice hockey team from Brantwick. Adults pay ten crowns a ticket.",
     [("The Mirefield Otters are an ice hockey team from Brantwick.",
       "The Mirefield Otters are an ice hockey team from Brantwick."),
      ("Adults pay ten crowns a ticket.", "Adults pay ten crowns a ticket.")]),
    ("a bare 'The tower' in a building's article is the building's",
     "Skarra Point Lighthouse", "The Skarra Point Lighthouse stands on a granite headland. The tower is open to "
                                "visitors from May to September.",
     [("The Skarra Point Lighthouse stands on a granite headland.",
       "The Skarra Point Lighthouse stands on a granite headland."),
      ("The tower of the Skarra Point Lighthouse is open to visitors from May to September.",
       "The tower is open to visitors from May to September.")]),
    ("a common-noun title is the topic its mentions count for: life stages, body parts, 'the species', a relation",
     "Grey-crested tern", "The grey-crested tern is a seabird of the Quessa Sea. Adults are 38 centimetres long. The "
                          "crest is pale grey. The species nests in colonies. The population was estimated at 12,000 "
                          "pairs in 2018.",
     [("The grey-crested tern is a seabird of the Quessa Sea.", "The grey-crested tern is a seabird of the Quessa Sea."),
      ("Adults of the grey-crested tern are 38 centimetres long.", "Adults are 38 centimetres long."),
      ("The crest of the grey-crested tern is pale grey.", "The crest is pale grey."),
      ("The grey-crested tern nests in colonies.", "The species nests in colonies."),
      ("The population of the grey-crested tern was estimated at 12,000 pairs in 2018.",
       "The population was estimated at 12,000 pairs in 2018.")]),
    ("'the mineral' is a title the prose writes in lower case",
     "Orvanite", "Orvanite is a rare copper mineral. Collectors prize orvanite. The mineral has a hardness of 3.5.",
     [("Orvanite is a rare copper mineral.", "Orvanite is a rare copper mineral."),
      ("Collectors prize orvanite.", "Collectors prize orvanite."),
      ("Orvanite has a hardness of 3.5.", "The mineral has a hardness of 3.5.")]),
    ("'the couple' is the two people of the last sentence",
     "Hedda Marrin", "Hedda Marrin was a composer. In 1902 she married the painter Jonas Eck. The couple had no "
                     "children.",
     [("Hedda Marrin was a composer.", "Hedda Marrin was a composer."),
      ("In 1902 Hedda Marrin married the painter Jonas Eck.", "In 1902 she married the painter Jonas Eck."),
      ("Hedda Marrin and Jonas Eck had no children.", "The couple had no children.")]),
    ("a bare 'The rector' in an institution's article is the institution's",
     "University of Tallow", "The University of Tallow is a public university. The rector is elected every four years.",
     [("The University of Tallow is a public university.", "The University of Tallow is a public university."),
      ("The rector of the University of Tallow is elected every four years.",
       "The rector is elected every four years.")]),
    ("a title tagged PERSON whose own noun names no person ('Battle') is not a person, though the text says 'his'; "
     "'the ford' is not 'the Battle of Kessel Ford' (the head of an 'X of Y' name is X)",
     "Battle of Kessel Ford", "The Battle of Kessel Ford was fought in 1686 near the village of Kessel. General Otto "
                              "Brenn attacked at dawn, but his cavalry was slowed by the river. By noon the Arnsmark "
                              "troops held the ford. The defeat led Veldt to open peace talks.",
     [("The Battle of Kessel Ford was fought in 1686 near the village of Kessel.",
       "The Battle of Kessel Ford was fought in 1686 near the village of Kessel."),
      ("General Otto Brenn attacked at dawn.", "General Otto Brenn attacked at dawn"),
      ("General Otto Brenn's cavalry was slowed by the river.", "his cavalry was slowed by the river."),
      ("By noon the Arnsmark troops held Kessel Ford.", "By noon the Arnsmark troops held the ford."),
      ("The defeat of the Battle of Kessel Ford led Veldt to open peace talks.",
       "The defeat led Veldt to open peace talks.")]),
    ("'the town' in a city's article is the city (not the island the tagger gave town-like classes); weather as a "
     "subject is the place's; 'the port' is the city's",
     "Holmstad", "Holmstad is the second-largest city on the island of Quessa. The town received its charter in 1342. "
                 "Summers are cool, and snow is rare. The port handles about four million tonnes of cargo a year.",
     [("Holmstad is the second-largest city on the island of Quessa.",
       "Holmstad is the second-largest city on the island of Quessa."),
      ("Holmstad received its charter in 1342.", "The town received its charter in 1342."),
      ("Summers in Holmstad are cool.", "Summers are cool"),
      ("Snow in Holmstad is rare.", "snow is rare."),
      ("The port of Holmstad handles about four million tonnes of cargo a year.",
       "The port handles about four million tonnes of cargo a year.")]),
    ("a work's plural-looking title is singular when the text says 'is': 'It' is the work, not its composer",
     "The Salt Roads", "The Salt Roads is a choral cycle by the composer Hedda Marrin. It was first performed in 1897.",
     [("The Salt Roads is a choral cycle by the composer Hedda Marrin.",
       "The Salt Roads is a choral cycle by the composer Hedda Marrin."),
      ("The Salt Roads was first performed in 1897.", "It was first performed in 1897.")]),
    ("'the ship' in a ferry's article is the ferry, and 'she' may be a vessel (not a person)",
     "MS Quessa Star", "MS Quessa Star is a passenger ferry between Velmora and Holmstad. The ship was ordered in 1996. "
                       "She entered service in June 1998.",
     [("MS Quessa Star is a passenger ferry between Velmora and Holmstad.",
       "MS Quessa Star is a passenger ferry between Velmora and Holmstad."),
      ("MS Quessa Star was ordered in 1996.", "The ship was ordered in 1996."),
      ("MS Quessa Star entered service in June 1998.", "She entered service in June 1998.")]),
    ("a bare 'Turnout' (a sentence's first word, tagged a name) in an event's article is the event's",
     "Orl referendum", "The Orl referendum was held in 2004. Turnout was 71 per cent.",
     [("The Orl referendum was held in 2004.", "The Orl referendum was held in 2004."),
      ("Turnout in the Orl referendum was 71 per cent.", "Turnout was 71 per cent.")]),
    ("'these streams' are the streams just named",
     "Ossel", "The name Rijn is used for smaller streams. These streams are used for draining the land.",
     [("The name Rijn is used for smaller streams.", "The name Rijn is used for smaller streams."),
      ("The smaller streams are used for draining the land.", "These streams are used for draining the land.")]),
]

UNCHANGED = [
    # expletive 'it' stands for nothing
    ("Tarn Light", "It is said that the keeper never left the tower."),
    # the pronoun comes before the name it means, in the same sentence
    ("Ossel", "As it approaches the coast, the Ossel widens."),
    # the atom already names what 'its' means
    ("Ossel", "The Ossel encounters its main tributaries near Dask."),
]


@pytest.mark.parametrize("name,title,text,expected", CASES, ids=[c[0] for c in CASES])
def test_resolution_cases(nlp, name, title, text, expected):
    d = document_from_text("t/" + title, text, title=title)
    atoms = atomize(d, nlp)
    assert [(a.text, d.text[a.start:a.end]) for a in atoms] == expected


@pytest.mark.parametrize("title,text", UNCHANGED)
def test_left_as_written(nlp, title, text):
    d = document_from_text("t/" + title, text, title=title)
    assert [a.text for a in atomize(d, nlp)] == [text]


def test_she_with_no_person_in_sight_stays_unresolved(nlp):
    """Better an honest 'She' than a wrong name: the only candidates are a bridge and a town."""
    d = document_from_text("t/b", "The Venn Bridge carries the tram line. She designed it in 1885.", title="Brennholt")
    atoms = atomize(d, nlp)
    assert atoms[-1].text.startswith("She designed")
    assert "Venn Bridge" in atoms[-1].text  # 'it' is still the bridge


def test_a_gerund_heading_names_no_section_topic(nlp):
    """'## Visiting' is an activity, not a thing the section is about: 'The tower' stays the lighthouse's."""
    text = ("# Skarra Point Lighthouse\n\nThe Skarra Point Lighthouse stands on a granite headland.\n\n## Visiting\n\n"
            "The tower is open to visitors in summer.\n")
    d = document_from_text("t.md", text)
    assert [a.text for a in atomize(d, nlp)][-1] == "The tower of the Skarra Point Lighthouse is open to visitors in summer."


def test_heading_names_the_section_topic(nlp):
    text = "# Towns of Quessa\n\n## Dask\n\nIt trades mostly in timber.\n\n## Velmora\n\nIt exports cobalt glass.\n"
    d = document_from_text("t.md", text)
    assert [a.text for a in atomize(d, nlp)] == ["Dask trades mostly in timber.", "Velmora exports cobalt glass."]


def test_keys_never_carry_an_unresolved_subject_pronoun(nlp):
    d = document_from_text("t/v", "Velmora is a harbour town. It was founded in 1843. It exports glass.", title="Velmora")
    for a in atomize(d, nlp):
        assert not a.key.split("; ")[0].lower().startswith("it ")


def test_common_occupations_are_person_nouns():
    from doc2atom.lexicon import person_noun

    assert all(person_noun(w) for w in ("runner", "swimmer", "footballer", "diplomat", "judge"))
    assert not any(person_noun(w) for w in ("river", "tower", "film"))
