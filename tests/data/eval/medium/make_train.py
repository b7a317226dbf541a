"""Writes train.xml: about 1,000 facts about the fictional Vessa islands (issue 12's ~1,000
sample evaluation file).  A table of facts per island, 16 kinds of fact, each with its own
question and answer shapes (three question shapes per kind, picked per island), so the file
is not one sentence expanded.  Deterministic: ``python make_train.py`` rewrites the same file.
Its probes (hand-written, never used by training) are in probes.xml."""
import random
from xml.sax.saxutils import escape

rng = random.Random(20261201)
ISLANDS = ["Vessa", "Korrin", "Tamble", "Ostry", "Hallow", "Brin", "Merrow", "Quill", "Saltby",
           "Dunmore", "Lerwin", "Pellan", "Fardle", "Grest", "Omber", "Kessel", "Tarn", "Wick",
           "Rood", "Ashby", "Marlow", "Cobble", "Yarrow", "Elden", "Noss", "Pike", "Glim",
           "Harrow", "Sorrel", "Tully", "Bramble", "Inch", "Jessop", "Lune", "Moss", "Nettle",
           "Orrin", "Pebble", "Rill", "Skerry", "Thistle", "Umber", "Vane", "Wren", "Zeal",
           "Alder", "Birch", "Crag", "Dapple", "Fenn", "Gorse", "Heron", "Ivy", "Juniper",
           "Kelp", "Lark", "Mallow", "Oyster", "Puffin", "Quarry"]
TOWNS = ["Port", "Haven", "Cove", "Quay", "Landing", "Harbour", "Bay", "Steps"]
FOODS = ["smoked mackerel", "seaweed bread", "plum cake", "oyster stew", "honey biscuits",
         "goat cheese", "crab pies", "apple cider", "salted herring", "blackberry jam",
         "mussel soup", "barley buns"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
FESTIVALS = ["Lantern", "Kite", "Boat", "Harvest", "Fiddle", "Shell", "Bonfire", "Tide"]
LANGS = ["Old Vessan", "Norrish", "Brinic", "Tamblese"]
ANIMALS = ["grey puffin", "striped vole", "dwarf seal", "blue crab", "island hare",
           "spotted newt", "sea owl", "copper beetle", "marsh pony", "ring lizard"]
COLOURS = ["red", "green", "blue", "yellow", "black", "orange"]
GOODS = ["wool", "salt", "fish", "peat", "wooden boats", "cheese", "seaweed", "pottery",
         "rope", "honey"]
FIRST = ["Ada", "Bram", "Clara", "Dov", "Elsa", "Finn", "Greta", "Hugo", "Iris", "Jonas",
         "Kai", "Lena", "Milo", "Nora", "Otto", "Pia", "Rasmus", "Sofie", "Tomas", "Ulla"]
LAST = ["Marsh", "Holt", "Greer", "Lund", "Brack", "Finch", "Stroud", "Vance", "Weller", "Orme"]
DAYS = ["Mondays and Thursdays", "Tuesdays and Fridays", "Wednesdays and Saturdays",
        "every day except Sunday", "Mondays, Wednesdays and Fridays", "weekends only"]

KINDS = [
    ("population", ["How many people live on {I}?", "What is the population of {I}?",
                    "How many inhabitants does {I} have?"],
     lambda f: f"About {f['pop']:,} people live on {f['I']}."),
    ("town", ["What is the main town on {I}?", "Which town is the biggest on {I}?",
              "What is the name of the main town of {I}?"],
     lambda f: f"The main town on {f['I']} is {f['town']}."),
    ("ferry", ["How long is the ferry ride to {I}?", "How long does the ferry to {I} take?",
               "How many hours is the boat trip to {I}?"],
     lambda f: f"The ferry from the mainland to {f['I']} takes {f['fh']} hours and {f['fm']} minutes."),
    ("days", ["On which days does the ferry go to {I}?", "When does the ferry sail to {I}?",
              "Which days can I take the ferry to {I}?"],
     lambda f: f"The ferry sails to {f['I']} {f['days']}."),
    ("food", ["What food is {I} known for?", "What should I eat on {I}?",
              "Which dish is {I} famous for?"],
     lambda f: f"{f['I']} is known for its {f['food']}."),
    ("festival", ["When is the festival on {I}?", "What festival does {I} celebrate?",
                  "Which festival is held on {I}?"],
     lambda f: f"The {f['fest']} Festival on {f['I']} is held every {f['month']}."),
    ("hill", ["How high is the highest hill on {I}?", "What is the highest point of {I}?",
              "Which hill is the tallest on {I}?"],
     lambda f: f"The highest point of {f['I']} is {f['hill']} Hill, {f['height']} metres high."),
    ("area", ["How big is {I}?", "What is the area of {I}?", "How large is {I} in square kilometres?"],
     lambda f: f"{f['I']} covers {f['area']} square kilometres."),
    ("language", ["What language do people speak on {I}?", "Which language is spoken on {I}?",
                  "Do people on {I} speak their own language?"],
     lambda f: f"People on {f['I']} speak {f['lang']} as well as English."),
    ("settled", ["When was {I} first settled?", "How old is the oldest village on {I}?",
                 "In which year did people first live on {I}?"],
     lambda f: f"{f['I']} was first settled in {f['year']}."),
    ("airport", ["Does {I} have an airport?", "Can I fly to {I}?", "Is there an airstrip on {I}?"],
     lambda f: (f"Yes, {f['I']} has a small airstrip near {f['town']}." if f['air']
                else f"No, {f['I']} can only be reached by boat.")),
    ("animal", ["What animal lives only on {I}?", "Which animal is special to {I}?",
                "What rare animal can I see on {I}?"],
     lambda f: f"The {f['animal']} is found only on {f['I']}."),
    ("lighthouse", ["What colour is the lighthouse on {I}?", "How is the lighthouse of {I} painted?",
                    "What does the lighthouse on {I} look like?"],
     lambda f: f"The lighthouse on {f['I']} is painted {f['colour']} and white."),
    ("schools", ["How many schools are on {I}?", "How many schools does {I} have?",
                 "Are there schools on {I}?"],
     lambda f: (f"{f['I']} has one school." if f['schools'] == 1
                else f"{f['I']} has {f['schools']} schools.")),
    ("goods", ["What does {I} sell to the other islands?", "What is the main export of {I}?",
               "What do people on {I} trade?"],
     lambda f: f"{f['I']} mostly sells {f['goods']} to the other islands."),
    ("mayor", ["Who is the mayor of {I}?", "Who leads the council of {I}?",
               "What is the name of the mayor of {I}?"],
     lambda f: f"The mayor of {f['I']} is {f['mayor']}."),
]


def facts(name):
    return {"I": name, "pop": rng.randrange(40, 9000), "town": f"{name} {rng.choice(TOWNS)}",
            "fh": rng.randrange(1, 7), "fm": rng.choice([0, 10, 15, 20, 30, 40, 45, 50]),
            "days": "on " + rng.choice(DAYS) if not rng.random() < 0.1 else "every day",
            "food": rng.choice(FOODS), "fest": rng.choice(FESTIVALS), "month": rng.choice(MONTHS),
            "hill": rng.choice(["Crow", "Beacon", "Watch", "Signal", "Cairn", "Windy"]),
            "height": rng.randrange(30, 900), "area": rng.randrange(2, 400),
            "lang": rng.choice(LANGS), "year": rng.randrange(820, 1750),
            "air": rng.random() < 0.35, "animal": rng.choice(ANIMALS),
            "colour": rng.choice(COLOURS), "schools": rng.randrange(1, 6),
            "goods": rng.choice(GOODS), "mayor": f"{rng.choice(FIRST)} {rng.choice(LAST)}"}


def main():
    table = [facts(n) for n in ISLANDS]
    P, R, S = [], [], []
    for f in table:
        key = f["I"].lower()
        for kind, questions, answer in KINDS:
            pid = f"{key}::{kind}"
            q = questions[rng.randrange(len(questions))].format(I=f["I"])
            P.append(f'<prompt id="pr::{pid}">{escape(q)}</prompt>')
            R.append(f'<response id="re::{pid}">{escape(answer(f))}</response>')
            S.append(f'<sample-ids prompt="pr::{pid}" response="re::{pid}"/>')
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           "<!-- About 1,000 facts about the fictional Vessa islands, for `python -m poppins eval`",
           "     (issue 12). Written by make_train.py; probes (never trained on) in probes.xml.",
           "     No system prompt and no beyond-scope block (eval says so). -->",
           "<train>", "<constants><val-interval>50</val-interval></constants>",
           "<prompts>"] + P + ["</prompts>", "<responses>"] + R + ["</responses>", "<samples>"] \
        + S + ["</samples>",
               "<phrases>",
               '<phrase pattern="^How many (.+)\\?$"><variant value="Tell me how many $1."/></phrase>',
               '<phrase pattern="^Who is the (.+)\\?$"><variant value="Who&apos;s the $1?"/></phrase>',
               '<phrase pattern="^What is the (.+)\\?$"><variant value="Tell me the $1."/></phrase>',
               "</phrases>", "</train>"]
    with open("train.xml", "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
