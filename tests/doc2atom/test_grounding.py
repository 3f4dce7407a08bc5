"""doc2atom.grounding.unsupported: the names and numbers of an answer that its sources lack."""

from doc2atom.grounding import unsupported


def test_a_misspelt_name_is_flagged_and_the_sources_words_are_not():
    atom = "Departments of the Lumen Institute: Photochemistry, led by Dr. Irena Salk since 2015."
    q = "Who led the photochemistry department of the Lumen Institute?"
    assert unsupported("Photochemistry was led by Dr. Elena Salk since 2015.", [q, atom]) == ["Elena"]
    assert unsupported("Photochemistry was led by Dr. Irena Salk since 2015.", [q, atom]) == []


def test_numbers_compare_without_thousands_separators_and_new_ones_are_flagged():
    src = ["Quessa had 18,300 inhabitants in 2020."]
    assert unsupported("About 18300 people lived there in 2020.", src) == []
    assert unsupported("Quessa had 18,300 inhabitants in 2021 and 3 towns.", src) == ["2021", "3"]


def test_sentence_starts_possessives_and_acronyms():
    src = ["Amos Pelling built the canal. It opened in 1796."]
    # a capital at a sentence start is not a name; a possessive is its name; "U.S." is one token
    assert unsupported("It opened in 1796, and Pelling's canal was long.", src) == []
    assert unsupported("The canal opened in 1796. It was used by the U.S. Navy.", src) == ["U.S.", "Navy"]
    assert unsupported("It opened in 1796.", []) == ["1796"]
