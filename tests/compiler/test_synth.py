"""Synthesised questions: the cloze questions an atom is trained on, and the fronted ones its routing key adds."""

from compiler.synth import fronted, key_questions, questions


def test_fronted_questions_put_the_wh_word_first(nlp):
    cases = {
        "Under the Treaty of Ostvale, Veldt received the market town of Lessing.":
            ["What did Veldt receive under the Treaty of Ostvale?"],
        "Kessler Instruments was founded in 1921 by the watchmaker Otto Kessler.":
            ["Who was Kessler Instruments founded by?"],
        "Today Kessler Instruments employs about 320 people.": ["How many people does Kessler Instruments employ today?"],
        "Males guard the eggs.": ["What do males guard?"],
        "The bridge is known for its red paint.": ["What is the bridge known for?"],
        "The original oil lamp was replaced by an electric one in 1926.":
            ["What was the original oil lamp replaced by?"],
    }
    for text, want in cases.items():
        assert fronted(text, nlp) == want, text


def test_no_fronted_question_without_a_verb_and_a_subject_before_it(nlp):
    for text in ["The Rhine is a river.", "It was built in 1890.", "Velmora: a harbour town.",
                 "First run in 1977 with 212 starters and a single lap, the race now attracts 14,000 runners."]:
        assert fronted(text, nlp) == [], text


def test_key_questions_keep_the_trained_ones_first(nlp):
    text = "Veldt received the market town of Lessing."
    trained = questions(text, nlp, 6)
    keyq = key_questions(text, nlp, trained)
    assert keyq[:len(trained)] == trained
    assert keyq[len(trained):] == ["What did Veldt receive?"]
    assert key_questions(text, nlp, trained + ["What did Veldt receive?"]) == trained + ["What did Veldt receive?"]
