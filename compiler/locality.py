"""Unrelated prompts on which an atom must leave the base model's behaviour unchanged.

Written for doc2atom; deliberately disjoint from data/general_questions.json, which is the
held-out leakage test set. Diverse in form (questions, instructions, chit-chat) and topic.
"""

LOCALITY_PROMPTS = [
    "What is the capital of Italy?", "Who discovered penicillin?", "How many minutes are in an hour?",
    "What is the smallest prime number?", "Name a famous composer.", "What do cows drink?",
    "Explain what a verb is.", "What is photosynthesis?", "Who is the author of Hamlet?",
    "Which country has the largest population?", "What is the opposite of cold?", "How do you make tea?",
    "What is the speed of light?", "Tell me a fact about elephants.", "What is the capital of Canada?",
    "Write a short greeting.", "What is a noun?", "Which metal is liquid at room temperature?",
    "How many strings does a violin have?", "What is the capital of Australia?", "Who invented the telephone?",
    "What is the largest desert in the world?", "Describe a sunny day.", "What is 5 times 6?",
    "Which bird cannot fly?", "What is the main language of Mexico?", "Summarise the story of Cinderella.",
    "What is the chemical symbol for iron?", "How many players are on a football team?", "Hello, how are you?",
    "What is the capital of Germany?", "Why is the ocean salty?",
]
