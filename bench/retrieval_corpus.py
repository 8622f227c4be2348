"""A generated retrieval corpus with known answers: 40 topics, 8 documents each, 2 queries each.

Each topic has words its documents use and other words, of the same meaning, that only its
*paraphrase* query uses; its *keyword* query reuses document words. So the keyword queries
measure word matching (what the hashing embedder does) and the paraphrase queries measure
meaning (what a semantic model adds). Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

DOCS_PER_TOPIC = 8

# topic | words its documents use | a paraphrase query that shares none of them
_TABLE = """
astronomy|telescope galaxy nebula comet planets orbit|watching stars in the night sky
cooking|recipe oven flour butter simmer sauce|how to prepare a meal in the kitchen
gardening|soil compost seedlings pruning tomatoes mulch|growing vegetables in a backyard plot
football|goalkeeper penalty striker league midfield tackle|soccer match and its players
banking|loan mortgage interest deposit credit bank|borrowing money to buy a house
medicine|diagnosis symptoms physician treatment clinic patient|seeing a doctor when you are ill
sailing|mast hull keel harbor regatta sails|boats moved by wind on the sea
volcanoes|magma eruption lava crater ash basalt|mountains that explode with molten rock
programming|compiler function variable debugging syntax python|writing software code
music|melody chord guitar orchestra rhythm concert|playing songs on instruments
weather|forecast rainfall humidity storm temperature clouds|will it rain tomorrow
chess|bishop knight checkmate opening gambit pawn|a board game of kings and queens
aviation|runway cockpit pilot altitude turbulence airliner|flying in an aeroplane
coffee|espresso roast beans barista latte grinder|a hot caffeinated morning drink
dentistry|tooth cavity enamel filling dentist gums|care for your teeth and mouth
elections|ballot candidate voters campaign polling parliament|choosing a government
photography|aperture lens shutter exposure camera tripod|taking pictures
railways|locomotive station carriage timetable tracks conductor|travelling by train
insects|beetle antennae larvae ants wings colony|bugs and creepy crawlies
oceans|coral reef tides plankton currents seabed|life under the sea
painting|canvas brushstrokes oil palette portrait easel|artists making pictures with colour
fitness|workout treadmill squats cardio muscles gym|exercise to get in shape
law|court judge verdict lawyer lawsuit appeal|a trial and legal dispute
dogs|puppy leash barking breed kennel retriever|a loyal pet canine
cats|kitten whiskers purring litter feline claws|a pet that meows
bicycles|pedals chain gears saddle cycling handlebars|riding a bike to work
earthquakes|seismic tremor fault richter aftershock epicenter|the ground shaking violently
baking|dough yeast loaf crust sourdough knead|making bread at home
mountaineering|summit ascent crampons glacier ropes expedition|climbing high peaks
taxes|deduction revenue return audit income irs|paying the government what you owe
wine|vineyard grapes vintage cellar merlot tasting|fermented drink from the vine
electricity|voltage current circuit resistor battery wiring|how power flows through cables
fishing|rod bait trout reel angler hook|catching fish at the lake
libraries|librarian catalogue shelves borrowing books reading|a quiet place to read
robots|actuator sensors automation servo robotic arm|machines that move by themselves
vaccines|immunization antibodies dose vaccine immunity booster|a shot that prevents disease
trees|oak roots bark leaves forest timber|woods and woodland
weddings|bride groom ceremony vows reception bouquet|getting married
housing|rent landlord tenant apartment lease flat|a place to live in the city
sleep|insomnia dreams nap bedtime pillow rest|trouble getting enough shut-eye
"""
TOPICS = [tuple(line.split("|")) for line in _TABLE.strip().splitlines()]
FILLER = ("the report", "this note", "our team", "last year", "the study", "every week",
          "in practice", "the results", "most people", "a new approach")
TEMPLATES = ("{a} mentioned the {w1} and the {w2}.", "We looked at the {w1} with {a}.",
             "{a} says the {w1} matters more than the {w2}.", "Notes on the {w1}, {w2} and {w3}.")


@dataclass(frozen=True)
class Query:
    text: str
    kind: str  # keyword | paraphrase
    topic: str


def document(rng: random.Random, words: list[str]) -> str:
    """A short document of 4-6 sentences using its topic's words and neutral filler."""
    sentences = []
    for _ in range(rng.randint(4, 6)):
        w1, w2, w3 = rng.sample(words, 3)
        template = rng.choice(TEMPLATES)
        sentences.append(template.format(a=rng.choice(FILLER), w1=w1, w2=w2, w3=w3))
    return " ".join(sentences).capitalize()


def write(folder: Path, seed: int = 7) -> tuple[dict[str, str], list[Query]]:
    """The documents under `folder` ({file name: topic}) and the queries."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    topics, queries = {}, []
    for topic, words, paraphrase in TOPICS:
        vocabulary = words.split()
        for i in range(DOCS_PER_TOPIC):
            name = f"{topic}-{i}.txt"
            (folder / name).write_text(document(rng, vocabulary) + "\n")
            topics[name] = topic
        queries.append(Query(" ".join(rng.sample(vocabulary, 2)), "keyword", topic))
        queries.append(Query(paraphrase, "paraphrase", topic))
    return topics, queries


def long_documents(folder: Path, count: int = 160, seed: int = 11) -> None:
    """`count` documents of ~5,000 characters (about five chunks of ~200 tokens each), for
    ingest speed: the short ones above are one small chunk each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _, words, _ = TOPICS[i % len(TOPICS)]
        paragraphs = [" ".join(document(rng, words.split()) for _ in range(4))
                      for _ in range(5)]
        (folder / f"long-{i}.txt").write_text("\n\n".join(paragraphs) + "\n")
