#!/usr/bin/env python3
"""Generate llmkit's shipped Spanish data sets (deterministic, Python stdlib only, no network).

Writes ten JSONL files next to this script (UTF-8, "\\n" line endings, one JSON object per line,
`json.dumps(row, ensure_ascii=False, sort_keys=True)`, column names as TRL expects them):

  corpus_train / corpus_heldout.jsonl            {"text"}                         pretraining
  sft_train / sft_heldout.jsonl                  {"messages"}                     supervised fine-tuning
  preferences_train / preferences_heldout.jsonl  {"prompt", "chosen", "rejected"} reward model, DPO, PPO
  math_train / math_test.jsonl                   {"prompt", "answer"}             GRPO (verifiable answers)
  math_easy_train / math_easy_test.jsonl         {"prompt", "answer"}             GRPO on a tiny model (one step, 1-9)

All text comes from templates and vocabulary lists written by the llmkit authors (below): names,
cities, countries and capitals (real and invented), nouns with gender and plural, adjectives with
agreement, verbs with their present tense, numbers in words. Facts are kept consistent (each fruit
has one colour, each animal one number of legs, each country one capital) so that a tiny model can
learn them, and the same answer formats ("La respuesta es N.") appear in every stage. Randomness
comes only from random.Random(SEED + k), one generator per data set, and rows are deduplicated so
that no held-out row also appears in its train split. Output is byte-identical on every run.

  python data/make_data.py            # (re)write the files in data/  (also: make data)
  python data/make_data.py --check    # regenerate in a temp dir; exit 1 if any file differs
"""
import argparse
import json
import sys
import tempfile
from collections import namedtuple
from pathlib import Path
from random import Random

SEED = 20240611
HERE = Path(__file__).resolve().parent
CORPUS_TRAIN_BYTES = 1_350_000  # corpus_train.jsonl grows until it reaches this size
HELDOUT_EVERY = 16              # every 16th unique paragraph goes to corpus_heldout
N_SFT, N_SFT_HELD, N_PREF, N_PREF_HELD, N_MATH, N_MATH_TEST = 3000, 200, 2000, 200, 2000, 200
N_EASY, N_EASY_TEST, N_EASY_MORE_TEST = 1000, 200, 800  # 1,000 test problems: a paired test sees a 4-point gain
N_PREF_MORE_HELD = 800  # 1,000 held-out pairs: DPO's 3-4-point gains are then beyond a paired test's noise
MATH_SUFFIX = "Termina con «La respuesta es N»."
MATH_TEST_PROMPTS = set()     # filled by build() before anything else is generated

# ---------------------------------------------------------------------------------------- vocabulary
NAMES_M = ("Pablo Andrés Martín Joaquín Óscar Álvaro Hugo Diego Tomás Rubén Iván Sergio Héctor Raúl Ramón "
           "Julián Adrián Nicolás Gonzalo Marcos Lucas Mateo Emilio Víctor Ángel Fernando Jorge Manuel Simón "
           "Germán").split()
NAMES_F = ("Lucía María Sofía Inés Begoña Carmen Marta Elena Paula Sara Laura Julia Nuria Alba Noelia Rocío "
           "Irene Andrea Beatriz Lola Mónica Pilar Raquel Ángela Verónica Natalia Celia Amparo Valeria "
           "Ximena").split()
CITIES = ("Sevilla Málaga Cádiz Valencia Zaragoza Bilbao Granada Salamanca Logroño Medellín Cali Guadalajara "
          "Monterrey Rosario Valparaíso Arequipa Cuenca Mérida Puebla Cusco").split()
PET_NAMES = "Toby Luna Canela Nube Trufa Rayo Coco Pipo Chispa Bigotes Lucero Manchas".split()
# country : capital : language ("" = not stated) : famous for (invented countries only)
COUNTRIES = [tuple(x.strip().split(":")) for x in """España:Madrid:español:; Francia:París:francés:;
Italia:Roma:italiano:; Portugal:Lisboa:portugués:; Alemania:Berlín:alemán:; México:Ciudad de México:español:;
Perú:Lima:español:; Chile:Santiago:español:; Argentina:Buenos Aires:español:; Colombia:Bogotá:español:;
Ecuador:Quito:español:; Uruguay:Montevideo:español:; Paraguay:Asunción:español y guaraní:;
Venezuela:Caracas:español:; Cuba:La Habana:español:; Panamá:Ciudad de Panamá:español:;
Costa Rica:San José:español:; Nicaragua:Managua:español:; Honduras:Tegucigalpa:español:;
Guatemala:Ciudad de Guatemala:español:; El Salvador:San Salvador:español:; Japón:Tokio:japonés:;
China:Pekín:chino:; Egipto:El Cairo:árabe:; Marruecos:Rabat::; Grecia:Atenas:griego:; Suecia:Estocolmo:sueco:;
Noruega:Oslo:noruego:; Polonia:Varsovia:polaco:; Rusia:Moscú:ruso:; Irlanda:Dublín::; Canadá:Ottawa::;
Australia:Canberra:inglés:; Turquía:Ankara:turco:; Hungría:Budapest:húngaro:; Austria:Viena:alemán:;
Dinamarca:Copenhague:danés:; Finlandia:Helsinki::; Kenia:Nairobi::; Brasil:Brasilia:portugués:;
Estados Unidos:Washington:inglés:; Bélgica:Bruselas::; Corea del Sur:Seúl:coreano:;
Tailandia:Bangkok:tailandés:; Vietnam:Hanói:vietnamita:; Indonesia:Yakarta:indonesio:;
Islandia:Reikiavik:islandés:; Croacia:Zagreb:croata:; Rumanía:Bucarest:rumano:; Chequia:Praga:checo:;
Senegal:Dakar::; Argelia:Argel::; Zarvania:Miraluz:zarvano:montañas nevadas;
Belmora:Puerto Alba:belmorés:playas de arena blanca; Tolendia:Valdeluna:tolendio:bosques de pinos;
Quirala:Santa Brisa:quiralés:volcanes dormidos; Ostrania:Nieveclara:ostranio:lagos helados;
Marundia:Costafría:marundés:puertos de pescadores; Veloria:Altaverde:veloriano:jardines de rosas;
Crestonia:Rocalinda:crestonio:castillos antiguos; Palumbia:Villaserena:palumbés:campos de girasoles;
Isandra:Playamar:isandrés:islas pequeñas; Fendora:Torrebruna:fendorí:torres de piedra;
Galdovia:Campoclaro:galdovo:caballos salvajes; Lunaria:Pinoalto:lunario:cielos estrellados;
Sorvenia:Aguaviva:sorvenio:ríos caudalosos; Ribania:Puertoceleste:ribanés:barcos de vela;
Elvania:Sierraplata:elvanio:minas de plata; Dravonia:Lagoazul:dravonio:cascadas enormes;
Montalia:Vientosur:montalés:molinos de viento; Orvania:Valleoro:orvanio:viñedos dorados;
Tarsia:Brisamar:tarsio:arrecifes de coral""".split(";")]
Noun = namedtuple("Noun", "sg pl g")
PLURAL_EXC = {"país": "países", "paraguas": "paraguas", "lunes": "lunes", "martes": "martes",
              "miércoles": "miércoles", "jueves": "jueves", "viernes": "viernes"}

def plural(w):
    if w in PLURAL_EXC:
        return PLURAL_EXC[w]
    if w[-1] in "aeiouáéó":
        return w + "s"
    if w[-1] == "z":                                  # lápiz -> lápices
        return w[:-1] + "ces"
    if w[-1] in "ns":                                 # camión -> camiones, autobús -> autobuses
        w = w[:-2] + w[-2].translate(str.maketrans("áéíóú", "aeiou")) + w[-1]
    return w + "es"

def nouns(spec):
    return [Noun(w, plural(w), g) for w, g in (x.split("/") for x in spec.split())]

# fruit or vegetable / gender / its colour / its taste
FRUITS = [(Noun(w, plural(w), g), c, t) for w, g, c, t in (x.split("/") for x in """manzana/f/rojo/dulce
pera/f/verde/jugoso naranja/f/anaranjado/jugoso plátano/m/amarillo/dulce limón/m/amarillo/ácido fresa/f/rojo/dulce
uva/f/morado/dulce cereza/f/rojo/dulce sandía/f/verde/fresco melón/m/amarillo/dulce tomate/m/rojo/jugoso
zanahoria/f/anaranjado/crujiente pimiento/m/verde/crujiente aguacate/m/verde/suave mango/m/amarillo/dulce
piña/f/amarillo/jugoso ciruela/f/morado/dulce melocotón/m/amarillo/dulce cebolla/f/blanco/picante
pepino/m/verde/fresco""".split())]
OBJECTS = nouns("""libro/m lápiz/m cuaderno/m taza/f vaso/m plato/m cuchara/f tenedor/m botella/f mochila/f
camisa/f zapato/m sombrero/m paraguas/m teléfono/m cuadro/m pelota/f globo/m flor/f vela/f camión/m tren/m
coche/m bicicleta/f barco/m avión/m calcetín/m jabón/m botón/m cojín/m reloj/m llave/f lámpara/f cartel/m""")
SWEETS = nouns("galleta/f huevo/m pastel/m caramelo/m magdalena/f")
COUNTABLE = [f[0] for f in FRUITS] + OBJECTS + SWEETS
ROOMS = nouns("cocina/f salón/m dormitorio/m baño/m oficina/f clase/f garaje/m jardín/m")
FURNITURE = nouns("mesa/f silla/f sillón/m cama/f armario/m estantería/f ventana/f")
PREPS = ["sobre", "debajo de", "al lado de", "cerca de", "detrás de"]
COLORS = "rojo azul verde amarillo blanco negro gris marrón rosa morado".split()
# animal | gender | legs | where it lives | what it eats | sound it makes | where people keep it
ANIMALS = [(Noun(a, plural(a), g), int(legs), h, f, s, k)
           for a, g, legs, h, f, s, k in (x.strip().split("|") for x in """perro|m|4|en casa|carne|ladra|casa;
gato|m|4|en casa|pescado|maúlla|casa; vaca|f|4|en la granja|hierba|muge|granja;
caballo|m|4|en el establo|heno|relincha|granja; oveja|f|4|en el monte|hierba|bala|granja;
gallina|f|2|en el corral|maíz|cacarea|granja; pato|m|2|en el lago|semillas|grazna|granja;
pez|m|0|en el río|insectos||casa; araña|f|8|en los rincones|moscas||campo;
hormiga|f|6|bajo la tierra|migas de pan||campo; conejo|m|4|en el campo|zanahorias||casa;
ratón|m|4|en el granero|queso|chilla|campo; león|m|4|en la sabana|carne|ruge|zoo;
pájaro|m|2|en los árboles|semillas|canta|casa; rana|f|4|en la charca|moscas|croa|campo;
abeja|f|6|en la colmena|néctar|zumba|campo; mariposa|f|6|en el jardín|néctar||campo;
caracol|m|0|en el huerto|hojas||campo; cerdo|m|4|en la granja|bellotas|gruñe|granja;
burro|m|4|en el campo|paja|rebuzna|granja; lobo|m|4|en el bosque|carne|aúlla|zoo;
oso|m|4|en el bosque|miel y frutas|gruñe|zoo; delfín|m|0|en el mar|peces||zoo;
tortuga|f|4|en el estanque|lechuga||casa""".split(";"))]
KEPT = {"casa": "tiene {} en casa", "granja": "tiene {} en su granja", "zoo": "ve {} en el zoológico",
        "campo": "ve {} en el campo"}
PROFS = [tuple(p.strip().split("|")) for p in """médico|médica|en el hospital|cura a los enfermos;
maestro|maestra|en una escuela|enseña a leer a los niños;
panadero|panadera|en una panadería|hace pan muy temprano;
cocinero|cocinera|en un restaurante|prepara sopas y guisos;
enfermero|enfermera|en el hospital|cuida a los pacientes;
carpintero|carpintera|en un taller|hace mesas y sillas de madera;
pintor|pintora|en su estudio|pinta cuadros de colores; profesor|profesora|en un instituto|explica matemáticas;
abogado|abogada|en un despacho|defiende a sus clientes;
bombero|bombera|en el parque de bomberos|apaga incendios;
cartero|cartera|en correos|reparte cartas por el barrio;
agricultor|agricultora|en el campo|cultiva tomates y patatas;
periodista|periodista|en un periódico|escribe noticias; peluquero|peluquera|en una peluquería|corta el pelo;
veterinario|veterinaria|en una clínica|cura a los animales; camarero|camarera|en un bar|sirve cafés y zumos;
músico|música|en una orquesta|toca el violín; jardinero|jardinera|en el parque|riega las plantas;
pescador|pescadora|en el puerto|sale al mar en su barco; conductor|conductora|en la estación|conduce un autobús;
dentista|dentista|en una clínica dental|cuida los dientes""".split(";")]
HOBBIES = ("leer novelas|nadar en la piscina|pasear por el parque|jugar al fútbol|cocinar para sus amigos|"
           "escuchar música|dibujar animales|montar en bicicleta|cantar canciones|bailar salsa|"
           "ver películas").split("|")
CHARACTER = "alegre tranquilo generoso amable simpático ordenado divertido trabajador".split()
DAYS = "lunes martes miércoles jueves viernes sábado domingo".split()
MONTHS = "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split()
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
ORD = "primer segundo tercer cuarto quinto sexto séptimo octavo noveno décimo undécimo duodécimo".split()
IRREG = {v: f.split() for v, f in (x.strip().split(":") for x in """ser:soy eres es somos sois son;
estar:estoy estás está estamos estáis están; tener:tengo tienes tiene tenemos tenéis tienen;
ir:voy vas va vamos vais van; hacer:hago haces hace hacemos hacéis hacen;
poder:puedo puedes puede podemos podéis pueden; querer:quiero quieres quiere queremos queréis quieren;
decir:digo dices dice decimos decís dicen; venir:vengo vienes viene venimos venís vienen;
dormir:duermo duermes duerme dormimos dormís duermen; jugar:juego juegas juega jugamos jugáis juegan;
pedir:pido pides pide pedimos pedís piden; salir:salgo sales sale salimos salís salen;
poner:pongo pones pone ponemos ponéis ponen; saber:sé sabes sabe sabemos sabéis saben;
ver:veo ves ve vemos veis ven; dar:doy das da damos dais dan; oír:oigo oyes oye oímos oís oyen;
conocer:conozco conoces conoce conocemos conocéis conocen;
volver:vuelvo vuelves vuelve volvemos volvéis vuelven;
empezar:empiezo empiezas empieza empezamos empezáis empiezan;
pensar:pienso piensas piensa pensamos pensáis piensan; cerrar:cierro cierras cierra cerramos cerráis cierran;
traer:traigo traes trae traemos traéis traen;
encontrar:encuentro encuentras encuentra encontramos encontráis encuentran;
preferir:prefiero prefieres prefiere preferimos preferís prefieren""".split(";"))}
REGULAR = ("hablar cantar bailar caminar trabajar estudiar cocinar comprar escuchar mirar pintar nadar lavar ayudar "
           "preparar limpiar viajar tomar llevar visitar dibujar saltar desayunar cenar tocar comer beber leer "
           "aprender correr vender barrer romper comprender responder vivir escribir abrir subir recibir compartir "
           "decidir partir asistir").split()
VERBS = REGULAR + list(IRREG)
ENDINGS = {"ar": "o as a amos áis an", "er": "o es e emos éis en", "ir": "o es e imos ís en"}
PRONOUNS = [["yo"], ["tú"], ["él", "ella", "usted"], ["nosotros", "nosotras"], ["vosotros", "vosotras"],
            ["ellos", "ellas", "ustedes"]]
OPPOSITES = [tuple(p.split("-")) for p in """alto-bajo grande-pequeño rápido-lento caliente-frío nuevo-viejo
limpio-sucio fácil-difícil largo-corto fuerte-débil claro-oscuro alegre-triste lleno-vacío caro-barato dulce-amargo
rico-pobre ancho-estrecho abierto-cerrado duro-blando mojado-seco gordo-delgado ruidoso-silencioso cercano-lejano
bueno-malo pesado-ligero tranquilo-nervioso valiente-cobarde interesante-aburrido ordenado-desordenado sano-enfermo
verdadero-falso generoso-tacaño cómodo-incómodo despierto-dormido encendido-apagado posible-imposible útil-inútil
simpático-antipático primero-último""".split()]
SYSTEMS = ["Eres un asistente amable que responde siempre en español.",
           "Eres un asistente útil. Responde de forma breve y correcta."]
RUDE = ["¡Qué pregunta tan tonta! Búscalo tú.", "No pienso contestar eso.",
        "Eso lo sabe cualquiera. Déjame en paz.", "Pregúntale a otro, estoy ocupado.",
        "¡Qué pesado! No tengo ganas de responder."]
EMPTY = ["No sé.", "No sé.", "No sé.", "No lo sé.", "Ni idea."]
UNITS = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
         "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
         "veintiséis veintisiete veintiocho veintinueve").split()
TENS = "_ _ _ treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
HUNDREDS = ("_ ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos ochocientos "
            "novecientos").split()

# ---------------------------------------------------------------------------------------- grammar helpers
def words(n, g=None):
    """Spanish words for 0 <= n <= 9999; g='m'/'f' gives the form used before a noun (veintiún, doscientas)."""
    if n < 30:
        w = UNITS[n]
    elif n < 100:
        w = TENS[n // 10] + ("" if n % 10 == 0 else " y " + UNITS[n % 10])
    elif n < 1000:
        w = "cien" if n == 100 else HUNDREDS[n // 100] + ("" if n % 100 == 0 else " " + words(n % 100))
        w = w.replace("ientos", "ientas") if g == "f" else w
    else:
        w = ("mil" if n < 2000 else words(n // 1000) + " mil") + ("" if n % 1000 == 0 else " " + words(n % 1000))
    if g and w.endswith("uno"):
        w = w[:-1] if g == "m" else w[:-1] + "a"
        w = w[:-8] + "veintiún" if w.endswith("veintiun") else w
    return w

def adj(base, g="m", pl=False):
    """Agreement: adj('rojo', 'f', True) -> 'rojas'; adj('azul', 'f') -> 'azul'."""
    w = base[:-1] + "a" if g == "f" and base.endswith("o") else base + "a" if g == "f" and base.endswith("or") else base
    return plural(w) if pl else w

def art(n, pl=False, definite=True):
    a = ["el", "la", "los", "las"] if definite else ["un", "una", "unos", "unas"]
    return f"{a[(n.g == 'f') + 2 * pl]} {n.pl if pl else n.sg}"

def qty(k, n, in_words=False):
    if k == 1:
        return art(n, definite=False) if in_words else f"1 {n.sg}"
    return f"{words(k, n.g) if in_words else k} {n.pl}"

def conj(verb, p):
    return IRREG[verb][p] if verb in IRREG else verb[:-2] + ENDINGS[verb[-2:]].split()[p]

def cap(s):
    return s[:1].upper() + s[1:]

def fix(s):
    return s.replace(" de el ", " del ").replace(" a el ", " al ")

def fmt(rng, n):
    """Numbers >= 1000 half of the time with the Spanish thousands separator (1.250)."""
    return f"{n:,}".replace(",", ".") if n >= 1000 and rng.random() < 0.5 else str(n)

def person(rng):
    g = rng.choice("mf")
    return g, rng.choice(NAMES_M if g == "m" else NAMES_F)

# ---------------------------------------------------------------------------------------- tasks
# q: question, a: correct answer, wrong: a plausible wrong answer in the same format,
# en: the correct answer in English, follow(rng) -> (question, answer) for a second turn, or None.
Task = namedtuple("Task", "q a wrong en follow")
ANS = "La respuesta es {}."
OPW = {"+": "más", "-": "menos", "*": "por"}
ARITH_Q = {"+": ["¿Cuánto es {a} más {b}?", "Calcula {a} más {b}.", "Suma {a} y {b}."],
           "-": ["¿Cuánto es {a} menos {b}?", "Calcula {a} menos {b}.", "Resta {b} a {a}."],
           "*": ["¿Cuánto es {a} por {b}?", "Calcula {a} por {b}.", "Multiplica {a} por {b}."]}

def wrong_num(rng, r):
    w = r + rng.choice([-1, 1]) * rng.randint(1, 10)
    return w if w >= 0 else r + rng.randint(1, 10)

def t_arith(rng):
    op = rng.choice("++--*")
    a, b = (rng.randint(0, 12), rng.randint(0, 12)) if op == "*" else (rng.randint(0, 99), rng.randint(0, 99))
    a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    r = a + b if op == "+" else a - b if op == "-" else a * b

    def follow(rng):
        k, c = rng.randrange(3), rng.randint(1, 20)
        if k == 1 and r > 0:
            c = rng.randint(1, r)
            return f"¿Y si le resto {c}?", ANS.format(r - c)
        if k == 2:
            c = rng.randint(2, 5)
            return f"¿Y si lo multiplico por {c}?", ANS.format(r * c)
        return f"¿Y si le sumo {c}?", ANS.format(r + c)
    return Task(rng.choice(ARITH_Q[op]).format(a=a, b=b), ANS.format(r), ANS.format(wrong_num(rng, r)),
                f"The answer is {r}.", follow)

def capital_answer(c):
    return f"La capital de {c[0]} es {c[1]}."

def t_capital(rng):
    c, other, c2 = rng.sample(COUNTRIES, 3)
    q = rng.choice(["¿Cuál es la capital de {}?", "Dime la capital de {}.", "¿Qué ciudad es la capital de {}?",
                    "¿Sabes cuál es la capital de {}?"]).format(c[0])
    return Task(q, capital_answer(c), f"La capital de {c[0]} es {other[1]}.", f"The capital of {c[0]} is {c[1]}.",
                lambda rng: (f"¿Y la de {c2[0]}?", capital_answer(c2)))

ALL_NOUNS = COUNTABLE + [a[0] for a in ANIMALS] + ROOMS + FURNITURE

def plural_answer(n):
    return f"El plural de «{n.sg}» es «{n.pl}»."

def t_plural(rng):
    n, n2 = rng.sample(ALL_NOUNS, 2)
    if rng.random() < 0.2:
        q = rng.choice(["¿Cuál es el singular de «{}»?", "Dime el singular de «{}»."]).format(n.pl)
        return Task(q, f"El singular de «{n.pl}» es «{n.sg}».", f"El singular de «{n.pl}» es «{n.pl}».",
                    f"The singular of «{n.pl}» is «{n.sg}».", None)
    q = rng.choice(["¿Cuál es el plural de «{}»?", "Dime el plural de «{}».", "Escribe el plural de «{}»."])
    bad = n.sg + "es" if n.pl == n.sg + "s" else n.sg + "s"          # lápizs, manzanaes
    return Task(q.format(n.sg), plural_answer(n), f"El plural de «{n.sg}» es «{bad}».",
                f"The plural of «{n.sg}» is «{n.pl}».", lambda rng: (f"¿Y el de «{n2.sg}»?", plural_answer(n2)))

def rand_number(rng):
    return rng.choice([rng.randint(0, 100), rng.randint(0, 100), rng.randint(101, 999), rng.randint(1000, 9999)])

def number_answer(n):
    return f"El número {n} se escribe «{words(n)}»."

def t_number(rng):
    n, n2 = rand_number(rng), rand_number(rng)
    q = rng.choice(["Escribe el número {} en palabras.", "¿Cómo se escribe {} con letras?",
                    "Escribe {} con letras."])
    return Task(q.format(n), number_answer(n), f"El número {n} se escribe «{words(wrong_num(rng, n))}».",
                f"The number {n} is written «{words(n)}».", lambda rng: (f"¿Y {n2}?", number_answer(n2)))

def opposite_pair(rng):
    x, y = rng.choice(OPPOSITES)[::rng.choice([1, -1])]
    g, pl = rng.choice("mmf"), rng.random() < 0.25
    return adj(x, g, pl), adj(y, g, pl), g, pl

def opposite_answer(x, y):
    return f"El contrario de «{x}» es «{y}»."

def t_opposite(rng):
    (x, y, g, pl), (x2, y2, _, _) = opposite_pair(rng), opposite_pair(rng)
    q = rng.choice(["¿Cuál es el contrario de «{}»?", "Dime lo contrario de «{}».",
                    "¿Qué palabra significa lo contrario de «{}»?"]).format(x)
    other = adj(rng.choice([p for p in OPPOSITES if adj(p[1], g, pl) not in (x, y)])[1], g, pl)
    return Task(q, opposite_answer(x, y), opposite_answer(x, other), f"The opposite of «{x}» is «{y}».",
                lambda rng: (f"¿Y el de «{x2}»?", opposite_answer(x2, y2)))

def conj_table(v, persons=range(6)):
    return ", ".join(f"{PRONOUNS[p][0]} {conj(v, q)}" for p, q in zip(range(6), persons)).capitalize() + "."

def t_conj(rng):
    v = rng.choice(VERBS)
    if rng.random() < 0.2:
        q = rng.choice(["Conjuga el verbo «{}» en presente.", "¿Cómo se conjuga «{}» en presente?"]).format(v)
        return Task(q, conj_table(v), conj_table(v, [2] * 6), f"The present tense of «{v}» is: {conj_table(v)}", None)
    p, p2 = rng.sample(range(6), 2)
    pr, pr2 = rng.choice(PRONOUNS[p]), rng.choice(PRONOUNS[p2])
    q = rng.choice(["Conjuga el verbo «{}» en presente para «{}».", "Conjuga «{}» en presente con «{}».",
                    "¿Cómo se conjuga «{}» en presente con «{}»?"]).format(v, pr)
    return Task(q, f"{cap(pr)} {conj(v, p)}.", f"{cap(pr)} {conj(v, (p + rng.randint(1, 5)) % 6)}.",
                f"The form is «{pr} {conj(v, p)}».",
                lambda rng: (f"¿Y para «{pr2}»?", f"{cap(pr2)} {conj(v, p2)}."))

GREET = [("Hola, me llamo {n}.", "¡Hola, {n}! Encantado de conocerte. ¿En qué puedo ayudarte?"),
         ("Hola, soy {n}.", "¡Hola, {n}! Encantado de conocerte. ¿En qué puedo ayudarte?"),
         ("Buenos días, soy {n}.", "¡Buenos días, {n}! ¿En qué puedo ayudarte hoy?"),
         ("Buenas tardes, me llamo {n}.", "¡Buenas tardes, {n}! ¿En qué puedo ayudarte hoy?"),
         ("Me llamo {n} y vivo en {c}.", "¡Encantado, {n}! {c} es una ciudad muy bonita. ¿En qué puedo ayudarte?")]

def t_greet(rng):
    (_, n), (_, n2) = person(rng), person(rng)
    (q, a), c = rng.choice(GREET), rng.choice(CITIES + [c[1] for c in COUNTRIES])
    other = rng.choice([t_arith, t_capital, t_plural, t_number, t_opposite, t_conj])   # what the user asks next
    return Task(q.format(n=n, c=c), a.format(n=n, c=c), a.format(n=n2 if n2 != n else "amigo", c=c),
                f"Hello, {n}! Nice to meet you. How can I help you?", lambda rng: other(rng)[:2])

# ---------------------------------------------------------------------------------------- word problems
def word_problem(rng):
    """A Spanish word problem with 1 or 2 operations: (text, steps), steps = [(x, op, y, result), ...]."""
    (_, n), (g2, n2) = person(rng), person(rng)
    n2 = n2 if n2 != n else ("Pedro" if g2 == "m" else "Rosa")
    X, k = rng.choice(COUNTABLE), rng.randrange(13)
    how_many = f"¿{'Cuántos' if X.g == 'm' else 'Cuántas'} {X.pl}"
    r = rng.randint
    if k == 0:
        a, b, v = r(2, 99), r(2, 99), rng.choice(["compra", "recibe", "encuentra"])
        return f"{n} tiene {qty(a, X)} y {v} {b} más. {how_many} tiene ahora?", [(a, "+", b, a + b)]
    if k == 1:
        a = r(10, 99)
        b = r(1, a)
        return f"{n} tenía {qty(a, X)} y le dio {b} a {n2}. {how_many} le quedan?", [(a, "-", b, a - b)]
    if k == 2:
        a, b = r(2, 99), r(2, 30)
        return f"En cada caja hay {qty(a, X)}. {how_many} hay en {b} cajas?", [(a, "*", b, a * b)]
    if k == 3:
        X, a, b = rng.choice(OBJECTS), r(2, 60), r(2, 40)
        return (f"{cap(art(X, definite=False))} cuesta {a} euros. ¿Cuántos euros cuestan {b} {X.pl}?",
                [(a, "*", b, a * b)])
    if k == 4:
        a, b, c = r(2, 20), r(2, 50), r(1, 99)
        return (f"{n} compra {a} paquetes de {b} {X.pl} y {qty(c, X)} {adj('suelto', X.g, c != 1)}. {how_many} tiene "
                f"en total?", [(a, "*", b, a * b), (a * b, "+", c, a * b + c)])
    if k == 5:
        a, b = r(5, 40), r(5, 40)
        c = r(2, min(99, a * b))
        return (f"En un teatro hay {a} filas de {b} butacas. Hoy se ocupan {c} butacas. ¿Cuántas butacas quedan "
                f"libres?", [(a, "*", b, a * b), (a * b, "-", c, a * b - c)])
    if k == 6:
        a, b = r(5, 60), r(2, 30)
        c = r(2, a + b)
        return (f"En el autobús viajan {a} personas. En una parada suben {b} personas y bajan {c}. "
                f"¿Cuántas personas hay ahora en el autobús?", [(a, "+", b, a + b), (a + b, "-", c, a + b - c)])
    if k == 7:
        a, b, c = r(2, 40), r(2, 40), r(2, 30)
        return (f"{n} lee {a} páginas por la mañana y {b} por la tarde. ¿Cuántas páginas lee en {c} días?",
                [(a, "+", b, a + b), (a + b, "*", c, (a + b) * c)])
    if k == 8:
        big, a, b = r(1000, 4999), r(2, 20), r(5, 50)
        return (f"En la biblioteca de {rng.choice(CITIES)} hay {fmt(rng, big)} libros. Llegan {a} cajas con {b} libros "
                f"cada una. ¿Cuántos libros hay ahora?", [(a, "*", b, a * b), (big, "+", a * b, big + a * b)])
    if k == 9:
        big, a, b = r(1000, 4999), r(2, 40), r(2, 24)
        return (f"Un almacén tiene {fmt(rng, big)} botellas de agua. Hoy vende {a} cajas de {b} botellas. ¿Cuántas "
                f"botellas quedan?", [(a, "*", b, a * b), (big, "-", a * b, big - a * b)])
    if k == 10:
        a = r(20, 90)
        b = r(1, a - 5)
        return (f"{n} tiene {a} años y su {'hermano' if g2 == 'm' else 'hermana'} {n2} tiene {b} años menos. "
                f"¿Cuántos años tiene {n2}?", [(a, "-", b, a - b)])
    if k == 11:
        A, a = rng.choice([x for x in ANIMALS if x[1] >= 2 and x[5] in ("casa", "granja")]), r(2, 99)
        return (f"En la granja hay {a} {A[0].pl}. Cada {A[0].sg} tiene {A[1]} patas. ¿Cuántas patas hay en total?",
                [(a, "*", A[1], a * A[1])])
    a, b, c = r(2, 99), r(2, 99), r(2, 99)
    return (f"En una granja hay {a} gallinas, {b} vacas y {c} ovejas. ¿Cuántos animales hay en total?",
            [(a, "+", b, a + b), (a + b, "+", c, a + b + c)])

def easy_problem(rng):
    """A one-step problem with operands 1-9: within reach of the tiny demo model, so that GRPO
    has completions of both kinds to compare."""
    (_, n), (g2, n2) = person(rng), person(rng)
    n2 = n2 if n2 != n else ("Pedro" if g2 == "m" else "Rosa")
    X = rng.choice(COUNTABLE)
    how_many = f"¿{'Cuántos' if X.g == 'm' else 'Cuántas'} {X.pl}"
    if rng.random() < 0.5:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"{n} tiene {qty(a, X)} y compra {b} más. {how_many} tiene ahora?", [(a, "+", b, a + b)]
    a = rng.randint(2, 9)
    b = rng.randint(1, a)
    return f"{n} tenía {qty(a, X)} y le dio {b} a {n2}. {how_many} le quedan?", [(a, "-", b, a - b)]

def t_word_easy(rng):
    return t_word(rng, easy_problem)

def t_word(rng, problem=None):
    while True:
        text, steps = (problem or word_problem)(rng)
        q = f"{text} {MATH_SUFFIX}"
        if q not in MATH_TEST_PROMPTS:        # never reuse a math_test prompt
            break
    r = steps[-1][3]
    worked = " ".join(f"{x} {OPW[o]} {y} son {z}." for x, o, y, z in steps)
    return Task(q, f"{worked} {ANS.format(r)}", ANS.format(wrong_num(rng, r)), f"The answer is {r}.", None)

FAMILIES = {t_arith: 22, t_word: 10, t_word_easy: 8, t_capital: 12, t_plural: 12, t_number: 12, t_opposite: 10, t_conj: 12, t_greet: 8}

# SFT draws one-step problems more often than the corpus and the preference pairs do (the tiny model
# needs a few hundred of them before it copies the operands), and starts every worked answer with
# «Veamos:», so that the first operand is the same token in the answer as in the problem (" 3", not
# "3": the byte-level BPE glues the space to the digit, and an answer's first word has no space).
SFT_FAMILIES = FAMILIES | {t_word_easy: 24}
SFT_LEAD = "Veamos: "

def pick_task(rng, skip=(), weights=FAMILIES):
    fams = [f for f in weights if f not in skip]
    f = rng.choices(fams, [weights[f] for f in fams])[0]
    return f(rng)

# ---------------------------------------------------------------------------------------- corpus paragraphs
def some(rng, first, rest, lo=1, hi=5):
    """The `first` sentences, then an in-order random subset of `rest`: 2-6 sentences in all."""
    idx = sorted(rng.sample(range(len(rest)), rng.randint(min(lo, len(rest)), min(hi, len(rest)))))
    return " ".join(first + [rest[i] for i in idx])

def p_persona(rng):
    (g, n), (g2, n2) = person(rng), person(rng)
    prof, (fr, _, taste), ch = rng.choice(PROFS), rng.choice(FRUITS), rng.choice(CHARACTER)
    pet, k = rng.choice([a for a in ANIMALS if a[5] == "casa"])[0], rng.choice([1, 1, 1, 2, 3])
    col = rng.choice(["blanco", "negro", "gris", "marrón"])
    first = f"{n} vive en {rng.choice(CITIES + [c[1] for c in COUNTRIES])}."
    if rng.random() < 0.5:
        first = first.replace(" vive", f" tiene {words(rng.randint(18, 70), 'm')} años y vive")
    rest = [f"{'Él' if g == 'm' else 'Ella'} es {prof[g == 'f']} y trabaja {prof[2]}, donde {prof[3]}.",
            f"Tiene {art(pet, definite=False)} {adj(col, pet.g)} que se llama {rng.choice(PET_NAMES)}." if k == 1
            else f"Tiene {words(k, pet.g)} {pet.pl} {adj(col, pet.g, True)}.",
            f"Por la tarde le gusta {rng.choice(HOBBIES)}.",
            f"Le gustan mucho {art(fr, True)} porque son {adj(taste, fr.g, True)}.",
            f"Su {'amigo' if g2 == 'm' else 'amiga'} {n2} vive en {rng.choice(CITIES)} y {'lo' if g == 'm' else 'la'} "
            f"visita los {plural(rng.choice(DAYS))}.",
            f"{n} es una persona muy {adj(ch, 'f')}." if rng.random() < 0.5 else f"{n} es muy {adj(ch, g)}."]
    return some(rng, [first], rest)

def p_market(rng):
    (g, n), ((f1, c1, t1), (f2, _, _)) = person(rng), rng.sample(FRUITS, 2)
    a, b, p, w = rng.randint(1, 12), rng.randint(1, 12), rng.randint(1, 5), rng.random() < 0.6
    first = [f"El {rng.choice(DAYS)}, {n} va al mercado de {rng.choice(CITIES)}.",
             f"Compra {qty(a, f1, w)} y {qty(b, f2, w)}."]
    rest = [f"{cap(art(f1, a > 1))} {'son' if a > 1 else 'es'} {adj(c1, f1.g, a > 1)} y {adj(t1, f1.g, a > 1)}.",
            f"En total lleva {words(a + b) if w else a + b} cosas en la cesta.",
            f"{n} vuelve a casa muy {adj('contento', g)}."]
    if a > 1:
        rest.insert(2, f"Cada {f1.sg} cuesta {p} {'euro' if p == 1 else 'euros'}, así que paga {a * p} euros "
                       f"por {art(f1, True)}.")
    return some(rng, first, rest, 0, 4)

def p_arith(rng):
    (_, n), X, w = person(rng), rng.choice(COUNTABLE), rng.random() < 0.3
    num = words if w else str
    facts = [f"En clase de matemáticas, {n} aprende a {rng.choice(['sumar', 'restar', 'multiplicar'])}."]
    facts = facts if rng.random() < 0.4 else []
    while len(facts) < 5 and (len(facts) < 2 or rng.random() < 0.5):
        a, b, k = rng.randint(2, 20 if w else 60), rng.randint(1, 20 if w else 40), rng.randrange(7)
        if k == 0:
            facts.append(f"Si tengo {qty(a, X, w)} y compro {num(b)}, tengo {qty(a + b, X, w)}.")
        elif k == 1 and a > b:
            facts.append(f"Si {n} tiene {qty(a, X, w)} y regala {num(b)}, le {'queda' if a - b == 1 else 'quedan'} "
                         f"{qty(a - b, X, w)}.")
        elif k == 2:
            facts.append(cap(f"{num(a)} más {num(b)} son {num(a + b)}."))
        elif k == 3 and a >= b:
            facts.append(cap(f"{num(a)} menos {num(b)} son {num(a - b)}."))
        elif k == 4:
            a, b = rng.randint(2, 12), rng.randint(2, 12)
            facts.append(cap(f"{num(a)} por {num(b)} son {num(a * b)}."))
        elif k == 5:
            facts.append(f"El doble de {num(a)} es {num(2 * a)} y la mitad de {num(2 * a)} es {num(a)}.")
        elif k == 6:
            a, b = rng.randint(2, 9), rng.randint(2, 12)
            facts.append(f"Si hay {num(a)} cajas con {qty(b, X, w)} cada una, hay {qty(a * b, X, w)} en total.")
    return " ".join(facts)

def p_dialog(rng):
    (_, A), (_, B), k = person(rng), person(rng), rng.randrange(4)
    if k == 0:                                    # chat transcript in exactly the SFT answer formats
        t = pick_task(rng)
        lines = [f"Usuario: {t.q}", f"Asistente: {t.a}"]
        if t.follow and rng.random() < 0.5:
            lines += ["Usuario: {}\nAsistente: {}".format(*t.follow(rng))]
        return "\n".join(lines)
    if k == 1:
        t = pick_task(rng, skip=(t_word, t_greet))
        return f"{A} le pregunta a su asistente: «{t.q}». El asistente responde: «{t.a.rstrip('.')}»."
    if k == 2:
        place = rng.choice(["a la piscina", "al cine", "a la playa", "al parque", "a la biblioteca", "al teatro"])
        lines = [f"—¡Hola, {B}! ¿Qué tal estás?", f"—Muy bien, gracias, {A}. ¿Y tú?",
                 f"—Bien también. Hoy voy {place}.",
                 f"—¡Qué bien! Yo voy al mercado a comprar {rng.choice(FRUITS)[0].pl}."]
        return "\n".join(lines[:rng.randint(2, 4)])
    X, p, m = rng.choice(COUNTABLE), rng.randint(2, 9), rng.randint(2, 9)
    lines = [f"—Buenos días. ¿Cuánto cuesta {art(X, definite=False)}?", f"—Cada {X.sg} cuesta {p} euros.",
             f"—Entonces quiero {qty(m, X, True)}.", f"—Son {m * p} euros, por favor.",
             "—Aquí tiene. ¡Muchas gracias!", "—¡A usted! Que tenga un buen día."]
    return "\n".join(lines[:rng.randint(4, 6)])

def p_animal(rng):
    ((A, legs, home, food, sound, kept), other), (_, n) = rng.sample(ANIMALS, 2), person(rng)
    pl, k = rng.random() < 0.4, rng.randint(2, 9)
    s, the = "n" * pl, cap(art(A, pl))
    rest = [f"{the} no tiene{s} patas." if legs == 0 else f"{the} tiene{s} {words(legs)} patas."]
    rest += [f"{the} {sound}{s}."] * bool(sound)
    if legs != other[1]:
        big, small = (A, other[0]) if legs > other[1] else (other[0], A)
        rest.append(f"{cap(art(big))} tiene más patas que {art(small)}.")
    rest.append(f"{n} {KEPT[kept].format(qty(k, A, True))}.")
    rest += [f"Si hay {words(k)} {A.pl}, hay {k * legs} patas en total."] * bool(legs)
    return some(rng, [f"{the} vive{s} {home} y come{s} {food}."], rest)

ROUTINE = [("leer", "un libro"), ("estudiar", "inglés"), ("jugar", "al fútbol"), ("escuchar", "música"),
           ("escribir", "cartas"), ("correr", "por el parque"), ("pintar", "cuadros"), ("hacer", "los deberes"),
           ("ver", "una película"), ("tocar", "la guitarra"), ("nadar", "en la piscina"), ("cocinar", "un pastel"),
           ("visitar", "a los abuelos"), ("aprender", "a bailar")]

def p_routine(rng):
    """The same day told for one of the six grammatical persons, so every verb is conjugated for it."""
    ((_, n), (_, n2)), p, c = (person(rng), person(rng)), rng.randrange(6), rng.choice
    subj = [["Yo"], ["Tú"], [n], ["Nosotros", "Nosotras", "Mi familia y yo"], ["Vosotros", "Vosotras"],
            [f"{n} y {n2}", "Mis abuelos", "Ellos", "Ellas", "Mis primos"]][p]
    (v1, c1), (v2, c2) = rng.sample(ROUTINE, 2)
    food = c(['pan con tomate', 'cereales con leche', 'fruta y yogur', 'tostadas'])
    first = f"{c(subj)} {conj('desayunar', p)} {food} todas las mañanas."
    rest = [f"Después {conj('ir', p)} {c(['al trabajo', 'a la escuela', 'a la universidad', 'al mercado'])} "
            f"{c(['en autobús', 'en bicicleta', 'en metro', 'a pie', 'en coche'])}.",
            f"A las dos {conj('comer', p)} {c(['en casa', 'con los compañeros', 'en un restaurante pequeño'])}.",
            f"Por la tarde {conj(v1, p)} {c1} y {conj(v2, p)} {c2}.",
            f"Por la noche {conj('cenar', p)} {c(['sopa', 'pescado', 'una ensalada', 'tortilla de patatas'])} y "
            f"{conj('dormir', p)} ocho horas.",
            f"Los fines de semana {conj('querer', p)} descansar y {conj('salir', p)} con los amigos."]
    return some(rng, [first], rest)

def p_house(rng):
    (_, n), room, furn = person(rng), rng.choice(ROOMS), rng.choice(FURNITURE)
    (X, Y), (c1, c2) = rng.sample(OBJECTS, 2), rng.sample(COLORS, 2)
    a, b, k = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 5)
    rest = [f"También hay {qty(b, Y, True)} {adj(c2, Y.g, b > 1)}.",
            f"{cap(art(X, a > 1))} {'están' if a > 1 else 'está'} {rng.choice(PREPS)} {art(furn)}.",
            f"{n} trae {qty(k, X, True)} más y ahora hay {qty(a + k, X, True)}.",
            f"{n} limpia {art(room)} todos los {plural(rng.choice(DAYS))}."]
    return some(rng, [f"En {art(room)} hay {qty(a, X, True)} {adj(c1, X.g, a > 1)}."], rest)

def p_calendar(rng):
    (_, n), d, m = person(rng), rng.randrange(7), rng.randrange(12)
    if rng.random() < 0.5:
        lesson = rng.choice(["música", "natación", "inglés", "pintura", "baile", "ajedrez", "teatro"])
        return some(rng, [f"Hoy es {DAYS[d]}."], [f"Ayer fue {DAYS[d - 1]} y mañana será {DAYS[(d + 1) % 7]}.",
                    f"Pasado mañana será {DAYS[(d + 2) % 7]}.",
                    f"Los {plural(DAYS[d])}, {n} va a clase de {lesson}."], 1, 3)
    nd = "veintiocho días, o veintinueve en los años bisiestos" if m == 1 else f"{words(MONTH_DAYS[m], 'm')} días"
    return some(rng, [f"{cap(MONTHS[m])} es el {ORD[m]} mes del año."], [
        f"Después de {MONTHS[m]} viene {MONTHS[(m + 1) % 12]}.", f"{cap(MONTHS[m])} tiene {nd}.",
        f"El cumpleaños de {n} es en {MONTHS[m]}.", "La semana tiene siete días y el año tiene doce meses."], 1, 4)

def p_geo(rng):
    (g, n), ((C, cap_, lang, feat), (C2, cap2, _, _)) = person(rng), rng.sample(COUNTRIES, 2)
    rest = [f"En {C} se habla {lang}."] * bool(lang) + [f"{C} es un país famoso por sus {feat}."] * bool(feat)
    rest += [f"{n} viaja a {cap_} en {rng.choice(MONTHS)} y visita "
             f"{rng.choice(['el museo', 'el mercado', 'la catedral', 'el puerto', 'el parque'])} de la ciudad.",
             f"{cap_} es una ciudad muy {adj(rng.choice(['bonito', 'tranquilo', 'antiguo', 'moderno']), 'f')}.",
             f"En cambio, la capital de {C2} es {cap2}.", f"{n} vuelve a casa muy {adj('contento', g)}."]
    return some(rng, [rng.choice([f"La capital de {C} es {cap_}.", f"{cap_} es la capital de {C}."])], rest)

def p_language(rng):
    facts = [plural_answer(rng.choice(ALL_NOUNS)), opposite_answer(*opposite_pair(rng)[:2]),
             conj_table(rng.choice(VERBS)), number_answer(rand_number(rng))]
    return some(rng, [f"En la clase de lengua, {person(rng)[1]} aprende cosas nuevas."], facts, 1, 4)

PARAGRAPHS = {p_persona: 14, p_market: 10, p_arith: 14, p_dialog: 16, p_animal: 10, p_routine: 12, p_house: 8,
              p_calendar: 6, p_geo: 8, p_language: 6}

# ---------------------------------------------------------------------------------------- data sets
def dumps(row):
    return json.dumps(row, ensure_ascii=False, sort_keys=True)

def make_corpus(rng):
    seen, train, held, size = set(), [], [], 0
    while size < CORPUS_TRAIN_BYTES:
        text = fix(rng.choices(list(PARAGRAPHS), list(PARAGRAPHS.values()))[0](rng))
        if text in seen:
            continue
        seen.add(text)
        if len(seen) % HELDOUT_EVERY == 0:
            held.append({"text": text})
        else:
            train.append({"text": text})
            size += len(dumps(train[-1]).encode()) + 1
    return train, held

def split(rng, n_train, n_held, make, more_held=0):
    """Draw rows with distinct keys from make(rng) -> (key, row); the first n_held are the held-out split,
    then n_train train rows, then more_held more held-out rows (a bigger test set, the others unchanged)."""
    seen, rows = set(), []
    while len(rows) < n_train + n_held + more_held:
        key, row = make(rng)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows[n_held:n_held + n_train], rows[:n_held] + rows[n_held + n_train:]

def user(q):
    return {"role": "user", "content": q}

def assistant(a):
    return {"role": "assistant", "content": a}

def make_math(rng, problem=word_problem, n_train=N_MATH, n_test=N_MATH_TEST, more_test=0):
    def one(rng):
        text, steps = problem(rng)
        q = f"{text} {MATH_SUFFIX}"
        return q, {"prompt": [user(q)], "answer": str(steps[-1][3])}
    return split(rng, n_train, n_test, one, more_test)

def make_sft(rng):
    def one(rng):
        t = pick_task(rng, weights=SFT_FAMILIES)
        msgs = [user(t.q), assistant(SFT_LEAD + t.a if t.q.endswith(MATH_SUFFIX) else t.a)]
        if rng.random() < 0.2:                    # a second exchange: a follow-up, or a new question
            q2, a2 = t.follow(rng) if t.follow and rng.random() < 0.7 else pick_task(rng, (t_greet,), SFT_FAMILIES)[:2]
            a2 = SFT_LEAD + a2 if q2.endswith(MATH_SUFFIX) else a2
            msgs += [user(q2), assistant(a2)]
        key = dumps(msgs)                         # duplicates are judged without the system message
        if rng.random() < 0.2:
            msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}] + msgs
        return key, {"messages": msgs}
    return split(rng, N_SFT, N_SFT_HELD, one)

def make_prefs(rng):
    def one(rng):
        t = pick_task(rng)
        kind = rng.choice(["wrong"] * 4 + ["english"] * 2 + ["rude"] * 2 + ["empty"] * 2)
        bad = {"wrong": t.wrong, "english": t.en, "rude": rng.choice(RUDE), "empty": rng.choice(EMPTY)}[kind]
        return t.q, {"prompt": [user(t.q)], "chosen": [assistant(t.a)], "rejected": [assistant(bad)]}
    return split(rng, N_PREF, N_PREF_HELD, one, N_PREF_MORE_HELD)

def build():
    math_train, math_test = make_math(Random(SEED + 4))
    easy_train, easy_test = make_math(Random(SEED + 5), easy_problem, N_EASY, N_EASY_TEST, N_EASY_MORE_TEST)
    MATH_TEST_PROMPTS.clear()                 # keep GRPO's test prompts out of the corpus, SFT and preferences
    MATH_TEST_PROMPTS.update(r["prompt"][0]["content"] for r in math_test + easy_test)
    corpus_train, corpus_heldout = make_corpus(Random(SEED + 1))
    sft_train, sft_heldout = make_sft(Random(SEED + 2))
    pref_train, pref_heldout = make_prefs(Random(SEED + 3))
    return {"corpus_train.jsonl": corpus_train, "corpus_heldout.jsonl": corpus_heldout, "sft_train.jsonl": sft_train,
            "sft_heldout.jsonl": sft_heldout, "preferences_train.jsonl": pref_train,
            "preferences_heldout.jsonl": pref_heldout, "math_train.jsonl": math_train, "math_test.jsonl": math_test,
            "math_easy_train.jsonl": easy_train, "math_easy_test.jsonl": easy_test}

def write_all(outdir):
    files = build()
    for name, rows in files.items():
        with open(outdir / name, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(dumps(row) + "\n" for row in rows)
    return files

def main():
    ap = argparse.ArgumentParser(description="Generate llmkit's Spanish data sets into data/.")
    ap.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare byte for byte")
    if ap.parse_args().check:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_all(Path(tmp))
            bad = [n for n in files
                   if not (HERE / n).is_file() or (HERE / n).read_bytes() != (Path(tmp) / n).read_bytes()]
        for n in bad:
            print(f"differs or missing: data/{n}")
        print(f"FAILED: {len(bad)} of {len(files)} files differ" if bad else f"ok: all {len(files)} files identical")
        sys.exit(1 if bad else 0)
    for name, rows in write_all(HERE).items():
        print(f"{name:28s} {len(rows):6d} rows {(HERE / name).stat().st_size / 1024:8.1f} KB")

if __name__ == "__main__":
    main()
