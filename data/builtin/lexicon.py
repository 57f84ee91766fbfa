"""Word lists for the built-in corpus: an invented river valley, its towns, people, trades and animals.

Everything here was written for this project. The facts are consistent on purpose (a baker always
bakes, a town's market is always on the same day, foxes always hunt at night) so that a tiny BERT has
something it can actually learn from a few hundred kilobytes: masked words are predictable from
context, the next sentence of a document is about the same person or place, a paraphrase says the
same fact in other words, and a question is answered by one span of its paragraph.
"""
from __future__ import annotations

FIRST_NAMES = [
    "Ada", "Alba", "Anton", "Bram", "Cleo", "Dara", "Edwin", "Elsa", "Emil", "Fern", "Felix", "Greta",
    "Hugo", "Ida", "Ivo", "Jana", "Jonas", "Kira", "Lars", "Lena", "Lotte", "Mara", "Milo", "Nell",
    "Nico", "Olga", "Otto", "Pia", "Quinn", "Rosa", "Rufus", "Sami", "Sven", "Tara", "Theo", "Una",
    "Vera", "Viktor", "Wren", "Xavi", "Yara", "Zeno", "Agnes", "Basil", "Cora", "Dorian", "Esme", "Freya",
    "Gideon", "Hazel", "Ines", "Jasper", "Kai", "Linus", "Maeve", "Nora", "Oscar", "Petra", "Ronan", "Silas",
]
SHE = {"Ada", "Alba", "Cleo", "Dara", "Elsa", "Fern", "Greta", "Ida", "Jana", "Kira", "Lena", "Lotte",
       "Mara", "Nell", "Olga", "Pia", "Rosa", "Tara", "Una", "Vera", "Wren", "Yara", "Agnes", "Cora",
       "Esme", "Freya", "Hazel", "Ines", "Maeve", "Nora", "Petra"}
FAMILY_NAMES = [
    "Ashdown", "Birchall", "Carrow", "Dunmore", "Ellery", "Fenwick", "Garrick", "Holloway", "Ingram",
    "Jessop", "Kettering", "Lindqvist", "Marlow", "Norcott", "Orrin", "Pemberton", "Quarles", "Rowntree",
    "Selwyn", "Thackery", "Underhill", "Varga", "Whitlock", "Yardley", "Abernathy", "Brackett", "Cosgrove",
    "Draycott", "Everly", "Faulkner",
]

# name, landscape feature, trade, market day, founded, population
TOWNS = [
    ("Oakridge", "an old oak forest", "timber", "Monday", 1642, 4200),
    ("Millbrook", "a fast little stream", "flour", "Tuesday", 1588, 3100),
    ("Fernhollow", "a damp green valley", "cheese", "Wednesday", 1701, 1800),
    ("Stonebridge", "a wide stone bridge", "wool", "Thursday", 1523, 6700),
    ("Ashford", "a shallow ford", "leather", "Friday", 1610, 2900),
    ("Brightwater", "a clear blue lake", "fish", "Saturday", 1675, 5300),
    ("Pinecrest", "a steep pine hill", "honey", "Monday", 1732, 1200),
    ("Larkspur", "open meadows", "flowers", "Tuesday", 1760, 2100),
    ("Redmoor", "a windy red moor", "peat", "Wednesday", 1599, 1500),
    ("Willowmere", "a quiet willow pond", "baskets", "Thursday", 1688, 2600),
    ("Eastvale", "the eastern end of the valley", "apples", "Friday", 1547, 7800),
    ("Copperfield", "an old copper mine", "copper pots", "Saturday", 1621, 3900),
    ("Thornbury", "thick thorn hedges", "cider", "Monday", 1654, 2300),
    ("Glenhaven", "a sheltered glen", "pottery", "Tuesday", 1719, 1700),
    ("Silverlake", "a silver lake", "glass", "Wednesday", 1633, 4600),
    ("Maplewood", "a maple wood", "syrup", "Thursday", 1745, 1400),
]
RIVER = "the river Sel"

# job, place of work, what they do (verb phrase), tool
JOBS = [
    ("baker", "the bakery", "bakes bread before sunrise", "a long wooden paddle"),
    ("teacher", "the village school", "teaches children to read and count", "a box of chalk"),
    ("fisher", "the river bank", "catches trout in the river", "a net"),
    ("carpenter", "the workshop", "builds tables and chairs from wood", "a plane"),
    ("doctor", "the clinic", "looks after sick people", "a stethoscope"),
    ("farmer", "the farm", "grows wheat and potatoes", "a tractor"),
    ("potter", "the studio", "shapes bowls and jugs from clay", "a wheel"),
    ("librarian", "the library", "looks after hundreds of old books", "a ledger"),
    ("blacksmith", "the forge", "makes tools and horseshoes from iron", "a hammer"),
    ("tailor", "the shop on the square", "sews coats and shirts", "a needle"),
    ("gardener", "the town garden", "plants roses and tulips", "a spade"),
    ("shepherd", "the high pasture", "takes care of a flock of sheep", "a crook"),
    ("miller", "the mill", "grinds grain into flour", "a millstone"),
    ("nurse", "the clinic", "cares for patients day and night", "a thermometer"),
    ("postman", "the post office", "delivers letters and parcels", "a bicycle"),
    ("beekeeper", "the orchard", "collects honey from the hives", "a smoker"),
]

# pet, sound or habit, favourite food
PETS = [
    ("dog", "barks at the postman", "bones"),
    ("cat", "sleeps in the sun all afternoon", "fish"),
    ("parrot", "repeats every word it hears", "seeds"),
    ("rabbit", "digs holes in the garden", "carrots"),
    ("goat", "climbs on the garden wall", "hay"),
    ("horse", "pulls a small cart", "oats"),
    ("tortoise", "walks very slowly", "lettuce"),
    ("hamster", "runs on its wheel at night", "nuts"),
]

HOBBIES = ["playing chess", "swimming in the lake", "singing in the choir", "painting landscapes",
           "sailing small boats", "knitting scarves", "climbing hills", "riding a bicycle",
           "reading old maps", "playing the violin", "watching the stars", "baking cakes"]
FOODS = ["apple pie", "mushroom soup", "roast potatoes", "plum cake", "fresh bread with butter",
         "trout with lemon", "pea soup", "cheese dumplings", "honey biscuits", "berry tart"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "grey"]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}

# animal, home, active time, food, one more fact
WILD_ANIMALS = [
    ("fox", "a den under the roots of a tree", "at night", "mice and beetles", "has a bushy red tail"),
    ("owl", "a hollow in an old oak", "at night", "mice and voles", "can turn its head almost all the way round"),
    ("badger", "a sett of long tunnels", "at dusk", "worms and roots", "has a black and white face"),
    ("heron", "the reeds by the river", "at dawn", "frogs and small fish", "stands still on one leg"),
    ("otter", "a burrow in the river bank", "in the early morning", "fish and crabs", "floats on its back"),
    ("deer", "the edge of the forest", "at dawn and dusk", "leaves and grass", "can jump over tall fences"),
    ("hedgehog", "a nest of dry leaves", "at night", "slugs and snails", "rolls into a spiky ball"),
    ("swallow", "a mud nest under a roof", "during the day", "flying insects", "flies south every autumn"),
    ("squirrel", "a drey high in a tree", "during the day", "nuts and seeds", "hides acorns for the winter"),
    ("woodpecker", "a hole in a dead tree", "during the day", "insects under the bark", "drums on tree trunks"),
    ("frog", "the edge of a pond", "in the evening", "flies and worms", "lays its eggs in spring"),
    ("bat", "the roof of an old barn", "at night", "moths", "finds its way by listening to echoes"),
]

SEASONS = [
    ("spring", "the snow melts and the first flowers open", "farmers sow their fields"),
    ("summer", "the days are long and warm", "children swim in the lakes"),
    ("autumn", "the leaves turn brown and fall", "people pick apples and plums"),
    ("winter", "snow covers the hills and the river freezes", "families sit by the fire"),
]

ERRANDS = [
    ("bought a loaf of bread", "bakery"), ("posted a letter", "post office"),
    ("borrowed a book", "library"), ("had a tooth checked", "clinic"),
    ("bought a bag of apples", "market"), ("mended a coat", "tailor's shop"),
    ("sold a basket of eggs", "market"), ("bought new nails", "forge"),
]
WEATHER = ["it was raining", "the sun was shining", "a cold wind was blowing", "fog lay over the river",
           "snow was falling softly", "the sky was clear and blue"]
