#!/usr/bin/env python3
"""Generate llmkit's shipped Spanish data sets (deterministic, stdlib only, no network).

Writes eight JSONL files next to this script (UTF-8, "\\n" line endings, one JSON object
per line, `json.dumps(..., ensure_ascii=False, sort_keys=True)`, column names as in TRL):

  corpus_train / corpus_heldout.jsonl            {"text"}                 pretraining paragraphs
  sft_train / sft_heldout.jsonl                  {"messages"}             instruction/answer chats
  preferences_train / preferences_heldout.jsonl  {"prompt","chosen","rejected"}  reward model / DPO
  math_train / math_test.jsonl                   {"prompt","answer"}      verifiable problems (GRPO)

Everything is built from templates and vocabulary lists written by the llmkit authors (below):
names, cities, countries and capitals (real and invented), nouns with gender and plural,
adjectives with agreement, verbs with present-tense conjugation, numbers in words. The facts
are consistent (each fruit has one colour, each animal one number of legs, each country one
capital), so a tiny model can learn them. Randomness comes only from random.Random(SEED + k),
one generator per data set, so the output is byte-identical on every run.

  python data/make_data.py            # (re)write the files in data/
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
CORPUS_TRAIN_BYTES = 1_450_000      # corpus_train.jsonl grows until it reaches this size
HELDOUT_EVERY = 16                   # every 16th unique paragraph goes to corpus_heldout
N_SFT, N_SFT_HELD = 3000, 200
N_PREF, N_PREF_HELD = 2000, 200
N_MATH, N_MATH_TEST = 2000, 200
MATH_SUFFIX = "Termina tu respuesta con «La respuesta es N»."

# ----------------------------------------------------------------------------- vocabulary
NAMES_M = ("Pablo Andrés Martín Joaquín Óscar Álvaro Hugo Diego Tomás Rubén Iván Sergio Héctor "
           "Raúl Ramón Julián Adrián Nicolás Gonzalo Marcos Lucas Mateo Emilio Víctor Ángel "
           "Fernando Jorge Manuel Simón Germán").split()
NAMES_F = ("Lucía María Sofía Inés Begoña Carmen Marta Elena Paula Sara Laura Julia Nuria Alba "
           "Noelia Rocío Irene Andrea Beatriz Lola Mónica Pilar Raquel Ángela Verónica Natalia "
           "Celia Amparo Valeria Ximena").split()
CITIES = ("Sevilla Málaga Cádiz Valencia Zaragoza Bilbao Granada Salamanca Logroño Medellín Cali "
          "Guadalajara Monterrey Rosario Valparaíso Arequipa Cuenca Mérida Puebla Cusco").split()
PET_NAMES = "Toby Luna Canela Nube Trufa Rayo Coco Pipo Chispa Bigotes Lucero Manchas".split()
# (country, capital, language or "", what it is famous for or "")
COUNTRIES = [tuple(x.strip().split(":")) for x in """España:Madrid:español:; Francia:París:francés:; Italia:Roma:italiano:;
Portugal:Lisboa:portugués:; Alemania:Berlín:alemán:; México:Ciudad de México:español:;
Perú:Lima:español:; Chile:Santiago:español:; Argentina:Buenos Aires:español:;
Colombia:Bogotá:español:; Ecuador:Quito:español:; Uruguay:Montevideo:español:;
Paraguay:Asunción:español y guaraní:; Venezuela:Caracas:español:; Cuba:La Habana:español:;
Panamá:Ciudad de Panamá:español:; Costa Rica:San José:español:; Nicaragua:Managua:español:;
Honduras:Tegucigalpa:español:; Guatemala:Ciudad de Guatemala:español:;
El Salvador:San Salvador:español:; Japón:Tokio:japonés:; China:Pekín:chino:;
Egipto:El Cairo:árabe:; Marruecos:Rabat::; Grecia:Atenas:griego:; Suecia:Estocolmo:sueco:;
Noruega:Oslo:noruego:; Polonia:Varsovia:polaco:; Rusia:Moscú:ruso:; Irlanda:Dublín::;
Canadá:Ottawa::; Australia:Canberra:inglés:; Turquía:Ankara:turco:; Hungría:Budapest:húngaro:;
Austria:Viena:alemán:; Dinamarca:Copenhague:danés:; Finlandia:Helsinki::; Kenia:Nairobi::;
Brasil:Brasilia:portugués:; Estados Unidos:Washington:inglés:; Bélgica:Bruselas::;
Corea del Sur:Seúl:coreano:; Tailandia:Bangkok:tailandés:; Vietnam:Hanói:vietnamita:;
Indonesia:Yakarta:indonesio:; Islandia:Reikiavik:islandés:; Croacia:Zagreb:croata:;
Rumanía:Bucarest:rumano:; Chequia:Praga:checo:; Senegal:Dakar::; Argelia:Argel::;
Zarvania:Miraluz:zarvano:montañas nevadas;
Belmora:Puerto Alba:belmorés:playas de arena blanca;
Tolendia:Valdeluna:tolendio:bosques de pinos; Quirala:Santa Brisa:quiralés:volcanes dormidos;
Ostrania:Nieveclara:ostranio:lagos helados; Marundia:Costafría:marundés:puertos de pescadores;
Veloria:Altaverde:veloriano:jardines de rosas;
Crestonia:Rocalinda:crestonio:castillos antiguos;
Palumbia:Villaserena:palumbés:campos de girasoles; Isandra:Playamar:isandrés:islas pequeñas;
Fendora:Torrebruna:fendorí:torres de piedra; Galdovia:Campoclaro:galdovo:caballos salvajes;
Lunaria:Pinoalto:lunario:cielos estrellados; Sorvenia:Aguaviva:sorvenio:ríos caudalosos;
Ribania:Puertoceleste:ribanés:barcos de vela; Elvania:Sierraplata:elvanio:minas de plata;
Dravonia:Lagoazul:dravonio:cascadas enormes; Montalia:Vientosur:montalés:molinos de viento;
Orvania:Valleoro:orvanio:viñedos dorados; Tarsia:Brisamar:tarsio:arrecifes de coral;""".split(";") if x.strip()]

Noun = namedtuple("Noun", "sg pl g")
PLURAL_EXC = {"país": "países", "paraguas": "paraguas", "joven": "jóvenes", "sábado": "sábados",
              "domingo": "domingos"}
UNACCENT = str.maketrans("áéíóú", "aeiou")


def plural(w):
    if w in PLURAL_EXC:
        return PLURAL_EXC[w]
    if w[-1] in "aeiouáéó":
        return w + "s"
    if w[-1] == "z":
        return w[:-1] + "ces"
    if w[-1] in "ns":                          # camión -> camiones, autobús -> autobuses
        w = w[:-2] + w[-2].translate(UNACCENT) + w[-1]
    return w + "es"


def nouns(spec):
    return [Noun(w.split("/")[0], plural(w.split("/")[0]), w.split("/")[1]) for w in spec.split()]


# fruit / vegetable: noun, fixed colour, fixed taste
FRUITS = [(Noun(w, plural(w), g), c, t) for w, g, c, t in (x.split("/") for x in """
manzana/f/rojo/dulce pera/f/verde/jugoso naranja/f/anaranjado/jugoso plátano/m/amarillo/dulce
limón/m/amarillo/ácido fresa/f/rojo/dulce uva/f/morado/dulce cereza/f/rojo/dulce
sandía/f/verde/fresco melón/m/amarillo/dulce tomate/m/rojo/jugoso zanahoria/f/anaranjado/crujiente
pimiento/m/verde/crujiente aguacate/m/verde/suave mango/m/amarillo/dulce piña/f/amarillo/jugoso
ciruela/f/morado/dulce melocotón/m/amarillo/dulce cebolla/f/blanco/picante pepino/m/verde/fresco
""".split())]
OBJECTS = nouns("""libro/m lápiz/m cuaderno/m taza/f vaso/m plato/m cuchara/f tenedor/m botella/f
caja/f bolígrafo/m mochila/f camisa/f zapato/m sombrero/m paraguas/m teléfono/m cuadro/m pelota/f
globo/m flor/f vela/f camión/m tren/m coche/m bicicleta/f barco/m avión/m calcetín/m jabón/m
botón/m cojín/m reloj/m llave/f lámpara/f galleta/f huevo/m pastel/m caramelo/m cartel/m""")
ROOMS = nouns("cocina/f salón/m dormitorio/m baño/m oficina/f clase/f garaje/m jardín/m")
FURNITURE = nouns("mesa/f silla/f sillón/m cama/f armario/m estantería/f ventana/f")
PREPS = ["sobre", "debajo de", "al lado de", "cerca de", "detrás de"]
COLORS = "rojo azul verde amarillo blanco negro gris marrón rosa morado".split()
PET_COLORS = "negro blanco marrón gris".split()
# animal, legs, habitat, food, sound (3rd person singular or ""), kind of owner place
ANIMALS = [(Noun(a, plural(a), g), int(l), h, f, s, k) for a, g, l, h, f, s, k in (
    x.strip().split("|") for x in """perro|m|4|en casa|carne|ladra|casa; gato|m|4|en casa|pescado|maúlla|casa;
vaca|f|4|en la granja|hierba|muge|granja; caballo|m|4|en el establo|heno|relincha|granja;
oveja|f|4|en el monte|hierba|bala|granja; gallina|f|2|en el corral|maíz|cacarea|granja;
pato|m|2|en el lago|semillas|grazna|granja; pez|m|0|en el río|insectos||casa;
araña|f|8|en los rincones|moscas||zoo; hormiga|f|6|bajo la tierra|migas de pan||zoo;
conejo|m|4|en el campo|zanahorias||casa; ratón|m|4|en el granero|queso|chilla|zoo;
león|m|4|en la sabana|carne|ruge|zoo; pájaro|m|2|en los árboles|semillas|canta|casa;
rana|f|4|en la charca|moscas|croa|zoo; abeja|f|6|en la colmena|néctar|zumba|zoo;
mariposa|f|6|en el jardín|néctar||zoo; caracol|m|0|en el huerto|hojas||zoo;
cerdo|m|4|en la granja|bellotas|gruñe|granja; burro|m|4|en el campo|paja|rebuzna|granja;
lobo|m|4|en el bosque|carne|aúlla|zoo; oso|m|4|en el bosque|miel y frutas|gruñe|zoo;
delfín|m|0|en el mar|peces||zoo; tortuga|f|4|en el estanque|lechuga||casa""".split(";"))]
PLACE_OF = {"casa": "en casa", "granja": "en su granja", "zoo": "en el zoológico"}
PROFS = [tuple(p.split("|")) for p in """médico|médica|en el hospital|cura a los enfermos
maestro|maestra|en una escuela|enseña a leer a los niños
panadero|panadera|en una panadería|hace pan muy temprano
cocinero|cocinera|en un restaurante|prepara sopas y guisos
enfermero|enfermera|en el hospital|cuida a los pacientes
carpintero|carpintera|en un taller|hace mesas y sillas de madera
pintor|pintora|en su estudio|pinta cuadros de muchos colores
profesor|profesora|en un instituto|explica matemáticas
abogado|abogada|en un despacho|defiende a sus clientes
bombero|bombera|en el parque de bomberos|apaga incendios
cartero|cartera|en correos|reparte cartas por el barrio
agricultor|agricultora|en el campo|cultiva tomates y patatas
periodista|periodista|en un periódico|escribe noticias
peluquero|peluquera|en una peluquería|corta el pelo a sus clientes
veterinario|veterinaria|en una clínica|cura a los animales
camarero|camarera|en un bar|sirve cafés y zumos
músico|música|en una orquesta|toca el violín
jardinero|jardinera|en el parque|riega las plantas
pescador|pescadora|en el puerto|sale al mar en su barco
conductor|conductora|en la estación de autobuses|conduce un autobús por la ciudad
dentista|dentista|en una clínica dental|cuida los dientes de sus pacientes""".split("\n")]
HOBBIES = ("leer novelas|nadar en la piscina|pasear por el parque|jugar al fútbol|cocinar para sus "
           "amigos|escuchar música|dibujar animales|montar en bicicleta|cantar canciones|bailar "
           "salsa|cuidar las plantas|ver películas").split("|")
CHARACTER = "alegre tranquilo generoso amable simpático ordenado divertido trabajador".split()
CITY_ADJ = "bonito tranquilo antiguo moderno alegre limpio".split()
DAYS = "lunes martes miércoles jueves viernes sábado domingo".split()
MONTHS = "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split()
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
ORD = "primer segundo tercer cuarto quinto sexto séptimo octavo noveno décimo undécimo duodécimo".split()
CLASSES = "música natación inglés pintura baile guitarra ajedrez teatro".split()

IRREG = {v: f.split() for v, f in (x.split(":") for x in """ser:soy eres es somos sois son
estar:estoy estás está estamos estáis están|tener:tengo tienes tiene tenemos tenéis tienen
ir:voy vas va vamos vais van|hacer:hago haces hace hacemos hacéis hacen
poder:puedo puedes puede podemos podéis pueden|querer:quiero quieres quiere queremos queréis quieren
decir:digo dices dice decimos decís dicen|venir:vengo vienes viene venimos venís vienen
dormir:duermo duermes duerme dormimos dormís duermen|jugar:juego juegas juega jugamos jugáis juegan
pedir:pido pides pide pedimos pedís piden|salir:salgo sales sale salimos salís salen
poner:pongo pones pone ponemos ponéis ponen|saber:sé sabes sabe sabemos sabéis saben
ver:veo ves ve vemos veis ven|dar:doy das da damos dais dan|oír:oigo oyes oye oímos oís oyen
conocer:conozco conoces conoce conocemos conocéis conocen|volver:vuelvo vuelves vuelve volvemos volvéis vuelven
empezar:empiezo empiezas empieza empezamos empezáis empiezan|pensar:pienso piensas piensa pensamos pensáis piensan
cerrar:cierro cierras cierra cerramos cerráis cierran|traer:traigo traes trae traemos traéis traen
encontrar:encuentro encuentras encuentra encontramos encontráis encuentran
preferir:prefiero prefieres prefiere preferimos preferís prefieren""".replace("\n", "|").split("|"))}
REGULAR = ("hablar cantar bailar caminar trabajar estudiar cocinar comprar escuchar mirar pintar "
           "nadar lavar ayudar preparar limpiar viajar tomar llevar visitar dibujar saltar desayunar "
           "cenar tocar comer beber leer aprender correr vender barrer romper comprender responder "
           "vivir escribir abrir subir recibir compartir decidir partir asistir").split()
VERBS = REGULAR + list(IRREG)
ENDINGS = {"ar": "o as a amos áis an", "er": "o es e emos éis en", "ir": "o es e imos ís en"}
PRONOUNS = [["yo"], ["tú"], ["él", "ella", "usted"], ["nosotros", "nosotras"],
            ["vosotros", "vosotras"], ["ellos", "ellas", "ustedes"]]
OPPOSITES = [tuple(p.split("-")) for p in """alto-bajo grande-pequeño rápido-lento caliente-frío
nuevo-viejo limpio-sucio fácil-difícil largo-corto fuerte-débil claro-oscuro alegre-triste
lleno-vacío caro-barato dulce-amargo rico-pobre ancho-estrecho abierto-cerrado duro-blando
mojado-seco gordo-delgado ruidoso-silencioso cercano-lejano bueno-malo pesado-ligero
tranquilo-nervioso valiente-cobarde interesante-aburrido ordenado-desordenado sano-enfermo
verdadero-falso generoso-tacaño cómodo-incómodo despierto-dormido encendido-apagado
posible-imposible útil-inútil simpático-antipático primero-último""".split()]
SYSTEMS = ["Eres un asistente amable que responde siempre en español.",
           "Eres un asistente útil. Responde de forma breve y correcta.",
           "Responde en español con frases cortas y claras."]
RUDE = ["¡Qué pregunta tan tonta! Búscalo tú.", "No pienso contestar eso.",
        "Eso lo sabe cualquiera. Déjame en paz.", "Pregúntale a otro, estoy ocupado.",
        "¡Qué pesado! No tengo ganas de responder."]
EMPTY = ["No sé.", "No sé.", "No sé.", "No lo sé.", "Ni idea."]

# ----------------------------------------------------------------------------- grammar helpers
UNITS = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince "
         "dieciséis diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés "
         "veinticuatro veinticinco veintiséis veintisiete veintiocho veintinueve").split()
TENS = "_ _ _ treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
HUNDREDS = ("_ ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos "
            "ochocientos novecientos").split()


def words(n, g=None):
    """Spanish words for 0 <= n <= 9999; g='m'/'f' gives the form used before a noun (<1000)."""
    if n < 30:
        w = UNITS[n]
    elif n < 100:
        w = TENS[n // 10] + ("" if n % 10 == 0 else " y " + UNITS[n % 10])
    elif n < 1000:
        w = "cien" if n == 100 else HUNDREDS[n // 100] + ("" if n % 100 == 0 else " " + words(n % 100))
        if g == "f":
            w = w.replace("ientos", "ientas")
    else:
        w = ("mil" if n < 2000 else words(n // 1000) + " mil") + ("" if n % 1000 == 0 else " " + words(n % 1000))
    if g and w.endswith("uno"):
        w = w[:-1] if g == "m" else w[:-1] + "a"
        w = w[:-8] + "veintiún" if w.endswith("veintiun") else w
    return w


def adj(base, g="m", pl=False):
    w = base[:-1] + "a" if (g == "f" and base.endswith("o")) else base
    w = base + "a" if (g == "f" and base.endswith("or")) else w
    return plural(w) if pl else w


def art(n, pl=False, definite=True):
    a = {("m", 0): "el", ("f", 0): "la", ("m", 1): "los", ("f", 1): "las"} if definite else \
        {("m", 0): "un", ("f", 0): "una", ("m", 1): "unos", ("f", 1): "unas"}
    return f"{a[n.g, int(pl)]} {n.pl if pl else n.sg}"


def qty(k, n, in_words=False):
    if k == 1:
        return art(n, definite=False) if in_words else f"1 {n.sg}"
    return f"{words(k, n.g) if in_words else k} {n.pl}"


def conj(verb, p):
    if verb in IRREG:
        return IRREG[verb][p]
    return verb[:-2] + ENDINGS[verb[-2:]].split()[p]


def cap(s):
    return s[:1].upper() + s[1:]


def fix(s):
    return s.replace(" de el ", " del ").replace(" a el ", " al ")


def fmt(rng, n):  # numbers >= 1000 sometimes with the Spanish thousands separator: 1.250
    return f"{n:,}".replace(",", ".") if n >= 1000 and rng.random() < 0.5 else str(n)


def person(rng):
    g = rng.choice("mf")
    return g, rng.choice(NAMES_M if g == "m" else NAMES_F)


def cuantos(n):
    return "Cuántos" if n.g == "m" else "Cuántas"


# ----------------------------------------------------------------------------- tasks (SFT, preferences, corpus)
Task = namedtuple("Task", "q a wrong en follow")   # follow(rng) -> (question, answer) or None
ANS = "La respuesta es {}."
OPW = {"+": "más", "-": "menos", "*": "por"}
ARITH_Q = {"+": ["¿Cuánto es {a} más {b}?", "Calcula {a} más {b}.", "Suma {a} y {b}."],
           "-": ["¿Cuánto es {a} menos {b}?", "Calcula {a} menos {b}.", "Resta {b} a {a}."],
           "*": ["¿Cuánto es {a} por {b}?", "Calcula {a} por {b}.", "Multiplica {a} por {b}."]}


def wrong_num(rng, r):
    w = r + rng.choice([-1, 1]) * rng.randint(1, 10)
    return w if w >= 0 and w != r else r + rng.randint(1, 10)


def t_arith(rng):
    op = rng.choice("++--*")
    a, b = (rng.randint(0, 12), rng.randint(0, 12)) if op == "*" else (rng.randint(0, 99), rng.randint(0, 99))
    a, b = (max(a, b), min(a, b)) if op == "-" else (a, b)
    r = a + b if op == "+" else a - b if op == "-" else a * b

    def follow(rng):
        k, c = rng.randrange(3), rng.randint(1, 20)
        if k == 0 or (k == 1 and r == 0):
            return f"¿Y si le sumo {c}?", ANS.format(r + c)
        if k == 1:
            c = rng.randint(1, r)
            return f"¿Y si le resto {c}?", ANS.format(r - c)
        c = rng.randint(2, 5)
        return f"¿Y si lo multiplico por {c}?", ANS.format(r * c)
    return Task(rng.choice(ARITH_Q[op]).format(a=a, b=b), ANS.format(r), ANS.format(wrong_num(rng, r)),
                f"The answer is {r}.", follow)


def capital_answer(c):
    return f"La capital de {c[0]} es {c[1]}."


def t_capital(rng):
    c, other = rng.sample(COUNTRIES, 2)
    q = rng.choice(["¿Cuál es la capital de {}?", "Dime la capital de {}.",
                    "¿Qué ciudad es la capital de {}?", "¿Sabes cuál es la capital de {}?"]).format(c[0])
    c2 = rng.choice(COUNTRIES)
    follow = None if c2 == c else (lambda rng: (f"¿Y la de {c2[0]}?", capital_answer(c2)))
    return Task(q, capital_answer(c), f"La capital de {c[0]} es {other[1]}.",
                f"The capital of {c[0]} is {c[1]}.", follow)


ALL_NOUNS = [f[0] for f in FRUITS] + OBJECTS + [a[0] for a in ANIMALS] + ROOMS + FURNITURE


def plural_answer(n):
    return f"El plural de «{n.sg}» es «{n.pl}»."


def t_plural(rng):
    n, n2 = rng.sample(ALL_NOUNS, 2)
    if rng.random() < 0.2:
        q = rng.choice(["¿Cuál es el singular de «{}»?", "Dime el singular de «{}»."]).format(n.pl)
        return Task(q, f"El singular de «{n.pl}» es «{n.sg}».", f"El singular de «{n.pl}» es «{n.pl}».",
                    f"The singular of «{n.pl}» is «{n.sg}».", None)
    q = rng.choice(["¿Cuál es el plural de «{}»?", "Dime el plural de «{}».",
                    "Escribe el plural de «{}»."]).format(n.sg)
    bad = n.sg + "es" if n.pl == n.sg + "s" else n.sg + "s"
    return Task(q, plural_answer(n), f"El plural de «{n.sg}» es «{bad}».",
                f"The plural of «{n.sg}» is «{n.pl}».", lambda rng: (f"¿Y el de «{n2.sg}»?", plural_answer(n2)))


def rand_number(rng):
    return rng.choice([rng.randint(0, 100), rng.randint(0, 100), rng.randint(101, 999), rng.randint(1000, 9999)])


def number_answer(n):
    return f"El número {n} se escribe «{words(n)}»."


def t_number(rng):
    n, n2 = rand_number(rng), rand_number(rng)
    q = rng.choice(["Escribe el número {} en palabras.", "¿Cómo se escribe {} con letras?",
                    "Escribe {} con letras."]).format(n)
    return Task(q, number_answer(n), f"El número {n} se escribe «{words(wrong_num(rng, n))}».",
                f"The number {n} is written «{words(n)}».", lambda rng: (f"¿Y {n2}?", number_answer(n2)))


def opposite_pair(rng):
    x, y = rng.choice(OPPOSITES)[::rng.choice([1, -1])]
    g, pl = rng.choice("mmf"), rng.random() < 0.25
    return adj(x, g, pl), adj(y, g, pl), g, pl


def opposite_answer(x, y):
    return f"El contrario de «{x}» es «{y}»."


def t_opposite(rng):
    x, y, g, pl = opposite_pair(rng)
    x2, y2, _, _ = opposite_pair(rng)
    q = rng.choice(["¿Cuál es el contrario de «{}»?", "Dime lo contrario de «{}».",
                    "¿Qué palabra significa lo contrario de «{}»?"]).format(x)
    other = adj(rng.choice([p for p in OPPOSITES if adj(p[1], g, pl) != y])[1], g, pl)
    return Task(q, opposite_answer(x, y), opposite_answer(x, other), f"The opposite of «{x}» is «{y}».",
                lambda rng: (f"¿Y el de «{x2}»?", opposite_answer(x2, y2)))


def conj_table(v):
    return ", ".join(f"{PRONOUNS[p][0]} {conj(v, p)}" for p in range(6)).capitalize() + "."


def t_conj(rng):
    v = rng.choice(VERBS)
    if rng.random() < 0.2:
        q = rng.choice(["Conjuga el verbo «{}» en presente.", "¿Cómo se conjuga «{}» en presente?"]).format(v)
        wrong = ", ".join(f"{PRONOUNS[p][0]} {conj(v, 2)}" for p in range(6)).capitalize() + "."
        return Task(q, conj_table(v), wrong, f"The present tense of «{v}» is: {conj_table(v)}", None)
    p, p2 = rng.sample(range(6), 2)
    pr, pr2 = rng.choice(PRONOUNS[p]), rng.choice(PRONOUNS[p2])
    q = rng.choice(["Conjuga el verbo «{}» en presente para «{}».", "¿Cómo se conjuga «{}» en presente con «{}»?",
                    "Conjuga «{}» en presente con «{}»."]).format(v, pr)
    return Task(q, f"{cap(pr)} {conj(v, p)}.", f"{cap(pr)} {conj(v, (p + rng.randint(1, 5)) % 6)}.",
                f"The form is «{pr} {conj(v, p)}».", lambda rng: (f"¿Y para «{pr2}»?", f"{cap(pr2)} {conj(v, p2)}."))


GREET = [("Hola, me llamo {n}.", "¡Hola, {n}! Encantado de conocerte. ¿En qué puedo ayudarte?"),
         ("Hola, soy {n}.", "¡Hola, {n}! Encantado de conocerte. ¿En qué puedo ayudarte?"),
         ("Buenos días, soy {n}.", "¡Buenos días, {n}! ¿En qué puedo ayudarte hoy?"),
         ("Buenas tardes, me llamo {n}.", "¡Buenas tardes, {n}! ¿En qué puedo ayudarte hoy?"),
         ("Me llamo {n} y vivo en {c}.", "¡Encantado, {n}! {c} es una ciudad muy bonita. ¿En qué puedo ayudarte?")]


def t_greet(rng):
    (_, n), (_, n2) = person(rng), person(rng)
    q, a = rng.choice(GREET)
    c = rng.choice(CITIES + [c[1] for c in COUNTRIES])
    n2 = n2 if n2 != n else "amigo"
    other = rng.choice([t_arith, t_capital, t_plural, t_number, t_opposite, t_conj])
    return Task(q.format(n=n, c=c), a.format(n=n, c=c), a.format(n=n2, c=c),
                f"Hello, {n}! Nice to meet you. How can I help you?", lambda rng: other(rng)[:2])


# ----------------------------------------------------------------------------- word problems (math, SFT, preferences)
def wp(rng):
    """One Spanish word problem: (text, answer, steps) with steps = [(x, op, y, result), ...]."""
    (g, n), (g2, n2) = person(rng), person(rng)
    n2 = n2 if n2 != n else ("Pedro" if g2 == "m" else "Rosa")
    X = rng.choice([f[0] for f in FRUITS] + OBJECTS[:22])
    k = rng.randrange(13)
    if k == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        v = rng.choice(["compra", "recibe", "encuentra"])
        return f"{n} tiene {qty(a, X)} y {v} {b} más. ¿{cuantos(X)} {X.pl} tiene ahora?", [(a, "+", b, a + b)]
    if k == 1:
        a = rng.randint(10, 99); b = rng.randint(1, a)
        return f"{n} tenía {qty(a, X)} y le dio {b} a {n2}. ¿{cuantos(X)} {X.pl} le quedan?", [(a, "-", b, a - b)]
    if k == 2:
        a, b = rng.randint(2, 99), rng.randint(2, 30)
        return f"En cada caja hay {qty(a, X)}. ¿{cuantos(X)} {X.pl} hay en {b} cajas?", [(a, "*", b, a * b)]
    if k == 3:
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        return (f"{cap(art(X, definite=False))} cuesta {a} euros. ¿Cuántos euros cuestan {b} {X.pl}?",
                [(a, "*", b, a * b)])
    if k == 4:
        a, b, c = rng.randint(2, 20), rng.randint(2, 50), rng.randint(1, 99)
        return (f"{n} compra {a} paquetes de {b} {X.pl} y {qty(c, X)} {adj('suelto', X.g, c != 1)}. "
                f"¿{cuantos(X)} {X.pl} tiene en total?", [(a, "*", b, a * b), (a * b, "+", c, a * b + c)])
    if k == 5:
        a, b = rng.randint(5, 40), rng.randint(5, 40); c = rng.randint(2, min(99, a * b))
        return (f"En un teatro hay {a} filas de {b} butacas. Hoy se ocupan {c} butacas. "
                f"¿Cuántas butacas quedan libres?", [(a, "*", b, a * b), (a * b, "-", c, a * b - c)])
    if k == 6:
        a, b = rng.randint(5, 60), rng.randint(2, 30); c = rng.randint(2, a + b)
        return (f"En el autobús viajan {a} personas. En una parada suben {b} personas y bajan {c}. "
                f"¿Cuántas personas hay ahora en el autobús?", [(a, "+", b, a + b), (a + b, "-", c, a + b - c)])
    if k == 7:
        a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 30)
        return (f"{n} lee {a} páginas por la mañana y {b} por la tarde. ¿Cuántas páginas lee en {c} días?",
                [(a, "+", b, a + b), (a + b, "*", c, (a + b) * c)])
    if k == 8:
        big, a, b = rng.randint(1000, 4999), rng.randint(2, 20), rng.randint(5, 50)
        return (f"En la biblioteca de {rng.choice(CITIES)} hay {fmt(rng, big)} libros. Llegan {a} cajas con "
                f"{b} libros cada una. ¿Cuántos libros hay ahora?", [(a, "*", b, a * b), (big, "+", a * b, big + a * b)])
    if k == 9:
        big, a, b = rng.randint(1000, 4999), rng.randint(2, 40), rng.randint(2, 24)
        return (f"Un almacén tiene {fmt(rng, big)} botellas de agua. Hoy vende {a} cajas de {b} botellas. "
                f"¿Cuántas botellas quedan?", [(a, "*", b, a * b), (big, "-", a * b, big - a * b)])
    if k == 10:
        a = rng.randint(20, 90); b = rng.randint(1, a - 5)
        return (f"{n} tiene {a} años y su {'hermano' if g2 == 'm' else 'hermana'} {n2} tiene {b} años menos. "
                f"¿Cuántos años tiene {n2}?", [(a, "-", b, a - b)])
    if k == 11:
        A = rng.choice([x for x in ANIMALS if x[1] >= 2]); a = rng.randint(2, 99)
        return (f"En la granja hay {a} {A[0].pl}. Cada {A[0].sg} tiene {A[1]} patas. ¿Cuántas patas hay en total?",
                [(a, "*", A[1], a * A[1])])
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 99)
    return (f"En una granja hay {a} gallinas, {b} vacas y {c} ovejas. ¿Cuántos animales hay en total?",
            [(a, "+", b, a + b), (a + b, "+", c, a + b + c)])


def explain(steps):
    return " ".join(f"{x} {OPW[o]} {y} son {r}." for x, o, y, r in steps)


def t_word(rng, forbidden=frozenset()):
    while True:
        text, steps = wp(rng)
        q = f"{text} {MATH_SUFFIX}"
        if q not in forbidden:
            break
    r = steps[-1][3]
    return Task(q, f"{explain(steps)} {ANS.format(r)}", ANS.format(wrong_num(rng, r)), f"The answer is {r}.", None)


FAMILIES = [(t_arith, 22), (t_word, 12), (t_capital, 12), (t_plural, 12), (t_number, 12),
            (t_opposite, 10), (t_conj, 12), (t_greet, 8)]


def pick_task(rng, forbidden):
    f = rng.choices([f for f, _ in FAMILIES], [w for _, w in FAMILIES])[0]
    return f(rng, forbidden) if f is t_word else f(rng)


# ----------------------------------------------------------------------------- corpus paragraphs
def some(rng, first, rest, lo=1, hi=5):
    """First sentence(s), then an in-order random subset of `rest` (total 2-6 sentences)."""
    k = rng.randint(min(lo, len(rest)), min(hi, len(rest)))
    idx = sorted(rng.sample(range(len(rest)), k))
    return " ".join(first + [rest[i] for i in idx])


def p_persona(rng):
    g, n = person(rng)
    g2, n2 = person(rng)
    pr = "Él" if g == "m" else "Ella"
    prof = rng.choice(PROFS)
    city = rng.choice(CITIES + [c[1] for c in COUNTRIES])
    first = (f"{n} tiene {words(rng.randint(18, 70), 'm')} años y vive en {city}." if rng.random() < 0.5
             else f"{n} vive en {city}.")
    pet, k = rng.choice([a for a in ANIMALS if a[5] == "casa"])[0], rng.choice([1, 1, 1, 2, 3])
    col = rng.choice(PET_COLORS)
    pet_s = (f"Tiene {art(pet, definite=False)} {adj(col, pet.g)} que se llama {rng.choice(PET_NAMES)}." if k == 1
             else f"Tiene {words(k, pet.g)} {pet.pl} {adj(col, pet.g, True)}.")
    fr, _, taste = rng.choice(FRUITS)
    ch = rng.choice(CHARACTER)
    rest = [f"{pr} es {prof[0] if g == 'm' else prof[1]} y trabaja {prof[2]}, donde {prof[3]}.", pet_s,
            f"Por la tarde le gusta {rng.choice(HOBBIES)}.",
            f"Le gustan mucho {art(fr, True)} porque son {adj(taste, fr.g, True)}.",
            f"Su {'amigo' if g2 == 'm' else 'amiga'} {n2} vive en {rng.choice(CITIES)} y "
            f"{'lo' if g == 'm' else 'la'} visita los {plural(rng.choice(DAYS))}.",
            (f"{n} es una persona muy {adj(ch, 'f')}." if rng.random() < 0.5 else f"{n} es muy {adj(ch, g)}.")]
    return some(rng, [first], rest)


def p_market(rng):
    g, n = person(rng)
    (f1, c1, t1), (f2, _, _) = rng.sample(FRUITS, 2)
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
    g, n = person(rng)
    X = rng.choice([f[0] for f in FRUITS] + OBJECTS)
    w = rng.random() < 0.3
    num = (lambda k: words(k)) if w else str
    facts = []
    for _ in range(rng.randint(2, 4)):
        a, b = rng.randint(2, 20 if w else 60), rng.randint(1, 20 if w else 40)
        k = rng.randrange(7)
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
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 12)
            facts.append(f"Si hay {num(a)} cajas con {qty(b, X, w)} cada una, hay {qty(a * b, X, w)} en total.")
    if rng.random() < 0.4:
        facts.insert(0, f"En clase de matemáticas, {n} aprende a {rng.choice(['sumar', 'restar', 'multiplicar'])}.")
    return " ".join(facts)


def p_dialog(rng):
    (_, A), (gb, B) = person(rng), person(rng)
    k = rng.randrange(4)
    if k == 0:   # chat transcript in the SFT answer format
        t = pick_task(rng, frozenset())
        lines = [f"Usuario: {t.q}", f"Asistente: {t.a}"]
        if t.follow and rng.random() < 0.5:
            q2, a2 = t.follow(rng)
            lines += [f"Usuario: {q2}", f"Asistente: {a2}"]
        return "\n".join(lines)
    if k == 1:
        t = pick_task(rng, frozenset())
        return f"{A} le pregunta a su asistente: «{t.q}». El asistente responde: «{t.a.rstrip('.')}»."
    if k == 2:
        f1 = rng.choice(FRUITS)[0]
        place = rng.choice(["a la piscina", "al cine", "a la playa", "al parque", "a la biblioteca", "al teatro"])
        lines = [f"—¡Hola, {B}! ¿Qué tal estás?", f"—Muy bien, gracias, {A}. ¿Y tú?",
                 f"—Bien también. Hoy voy {place}.", f"—¡Qué bien! Yo voy al mercado a comprar {f1.pl}."]
        return "\n".join(lines[:rng.randint(2, 4)])
    X, p, m = rng.choice(OBJECTS + [f[0] for f in FRUITS]), rng.randint(2, 9), rng.randint(2, 9)
    lines = ["—Buenos días. ¿Cuánto cuesta " + art(X, definite=False) + "?",
             f"—Cada {X.sg} cuesta {p} euros.", f"—Entonces quiero {qty(m, X, True)}.",
             f"—Son {m * p} euros, por favor.", "—Aquí tiene. ¡Muchas gracias!", "—¡A usted! Que tenga un buen día."]
    return "\n".join(lines[:rng.randint(4, 6)])


def p_animal(rng):
    (A, legs, hab, food, sound, kind), other = rng.sample(ANIMALS, 2)
    pl = rng.random() < 0.4
    s = "n" if pl else ""
    the = cap(art(A, pl))
    legs_s = f"{the} no tiene{s} patas." if legs == 0 else f"{the} tiene{s} {words(legs)} patas."
    first = [f"{the} vive{s} {hab} y come{s} {food}."]
    _, n = person(rng)
    k = rng.randint(2, 9)
    rest = [legs_s]
    if sound:
        rest.append(f"{the} {sound}{s}.")
    if legs != other[1]:
        big, small = (A, other[0]) if legs > other[1] else (other[0], A)
        rest.append(f"{cap(art(big))} tiene más patas que {art(small)}.")
    rest.append(f"{n} tiene {qty(k, A, True)} {PLACE_OF[kind]}." if kind != "zoo"
                else f"{n} ve {qty(k, A, True)} {PLACE_OF[kind]}.")
    if legs:
        rest.append(f"Si hay {words(k)} {A.pl}, hay {k * legs} patas en total.")
    return some(rng, first, rest)


ROUTINE = [("leer", "un libro"), ("estudiar", "inglés"), ("jugar", "al fútbol"), ("escuchar", "música"),
           ("escribir", "cartas"), ("correr", "por el parque"), ("pintar", "cuadros"), ("hacer", "los deberes"),
           ("ver", "una película"), ("tocar", "la guitarra"), ("nadar", "en la piscina"),
           ("cocinar", "un pastel"), ("visitar", "a los abuelos"), ("aprender", "a bailar")]


def p_routine(rng):
    (g, n), (_, n2) = person(rng), person(rng)
    p = rng.randrange(6)
    subj = {0: "Yo", 1: "Tú", 2: n, 3: rng.choice(["Nosotros", "Nosotras", "Mi familia y yo"]),
            4: rng.choice(["Vosotros", "Vosotras"]),
            5: rng.choice([f"{n} y {n2}", "Mis abuelos", "Ellos", "Ellas", "Mis primos"])}[p]
    (v1, c1), (v2, c2) = rng.sample(ROUTINE, 2)
    first = [f"{subj} {conj('desayunar', p)} {rng.choice(['pan con tomate', 'cereales con leche', 'fruta y yogur', 'tostadas con aceite', 'café con galletas'])} todas las mañanas."]
    rest = [f"Después {conj('ir', p)} {rng.choice(['al trabajo', 'a la escuela', 'a la universidad', 'al mercado', 'a la oficina'])} "
            f"{rng.choice(['en autobús', 'en bicicleta', 'en metro', 'a pie', 'en coche'])}.",
            f"A las dos {conj('comer', p)} {rng.choice(['en casa', 'con los compañeros', 'en un restaurante pequeño'])}.",
            f"Por la tarde {conj(v1, p)} {c1} y {conj(v2, p)} {c2}.",
            f"Por la noche {conj('cenar', p)} {rng.choice(['sopa', 'pescado', 'una ensalada', 'tortilla de patatas'])} "
            f"y {conj('dormir', p)} ocho horas.",
            f"Los fines de semana {conj('querer', p)} descansar y {conj('salir', p)} con los amigos."]
    return some(rng, first, rest)


def p_house(rng):
    _, n = person(rng)
    room, furn = rng.choice(ROOMS), rng.choice(FURNITURE)
    X, Y = rng.sample(OBJECTS, 2)
    a, b, k = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 5)
    c1, c2 = rng.sample(COLORS, 2)
    first = [f"En {art(room)} hay {qty(a, X, True)} {adj(c1, X.g, a > 1)}."]
    rest = [f"También hay {qty(b, Y, True)} {adj(c2, Y.g, b > 1)}.",
            f"{cap(art(X, a > 1))} {'están' if a > 1 else 'está'} {rng.choice(PREPS)} {art(furn)}.",
            f"{n} trae {qty(k, X, True)} más y ahora hay {qty(a + k, X, True)}.",
            f"{n} limpia {art(room)} todos los {plural(rng.choice(DAYS))}."]
    return some(rng, first, rest)


def p_calendar(rng):
    _, n = person(rng)
    d, m = rng.randrange(7), rng.randrange(12)
    days = [f"Hoy es {DAYS[d]}.", f"Ayer fue {DAYS[d - 1]} y mañana será {DAYS[(d + 1) % 7]}.",
            f"Pasado mañana será {DAYS[(d + 2) % 7]}.",
            f"Los {plural(DAYS[d])}, {n} va a clase de {rng.choice(CLASSES)}."]
    nd = ("veintiocho días, o veintinueve en los años bisiestos" if m == 1 else f"{words(MONTH_DAYS[m], 'm')} días")
    months = [f"{cap(MONTHS[m])} es el {ORD[m]} mes del año.",
              f"Después de {MONTHS[m]} viene {MONTHS[(m + 1) % 12]}.", f"{cap(MONTHS[m])} tiene {nd}.",
              f"El cumpleaños de {n} es en {MONTHS[m]}.", "La semana tiene siete días y el año tiene doce meses."]
    if rng.random() < 0.5:
        return some(rng, days[:1], days[1:], 1, 3)
    return some(rng, months[:1], months[1:], 1, 4)


def p_geo(rng):
    g, n = person(rng)
    (C, cap_, lang, feat), (C2, cap2, _, _) = rng.sample(COUNTRIES, 2)
    first = [rng.choice([f"La capital de {C} es {cap_}.", f"{cap_} es la capital de {C}."])]
    rest = []
    if lang:
        rest.append(f"En {C} se habla {lang}.")
    if feat:
        rest.append(f"{C} es un país famoso por sus {feat}.")
    rest += [f"{n} viaja a {cap_} en {rng.choice(MONTHS)} y visita "
             f"{rng.choice(['el museo', 'el mercado', 'la catedral', 'el puerto', 'el parque'])} de la ciudad.",
             f"{cap_} es una ciudad muy {adj(rng.choice(CITY_ADJ), 'f')}.",
             f"En cambio, la capital de {C2} es {cap2}.", f"{n} vuelve a casa muy {adj('contento', g)}."]
    return some(rng, first, rest)


def p_language(rng):
    _, n = person(rng)
    facts = [plural_answer(rng.choice(ALL_NOUNS)), opposite_answer(*opposite_pair(rng)[:2]),
             conj_table(rng.choice(VERBS)), number_answer(rand_number(rng))]
    return some(rng, [f"En la clase de lengua, {n} aprende cosas nuevas."], facts, 1, 4)


PARAGRAPHS = [(p_persona, 14), (p_market, 10), (p_arith, 14), (p_dialog, 16), (p_animal, 10),
              (p_routine, 12), (p_house, 8), (p_calendar, 6), (p_geo, 8), (p_language, 6)]


# ----------------------------------------------------------------------------- data sets
def line_bytes(row):
    return len(json.dumps(row, ensure_ascii=False, sort_keys=True).encode()) + 1


def make_corpus(rng):
    seen, train, held, size = set(), [], [], 0
    while size < CORPUS_TRAIN_BYTES:
        f = rng.choices([f for f, _ in PARAGRAPHS], [w for _, w in PARAGRAPHS])[0]
        text = fix(f(rng))
        if text in seen:
            continue
        seen.add(text)
        if len(seen) % HELDOUT_EVERY == 0:
            held.append({"text": text})
        else:
            train.append({"text": text})
            size += line_bytes(train[-1])
    return train, held


def split(rng, n_train, n_held, make):
    """Draw unique rows from make(rng) -> (key, row); the first n_held go to held-out."""
    seen, rows = set(), []
    while len(rows) < n_train + n_held:
        key, row = make(rng)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows[n_held:], rows[:n_held]


def make_math(rng):
    def one(rng):
        text, steps = wp(rng)
        q = f"{text} {MATH_SUFFIX}"
        return q, {"prompt": [{"role": "user", "content": q}], "answer": str(steps[-1][3])}
    return split(rng, N_MATH, N_MATH_TEST, one)


def make_sft(rng, forbidden):
    def one(rng):
        t = pick_task(rng, forbidden)
        msgs = [{"role": "user", "content": t.q}, {"role": "assistant", "content": t.a}]
        if rng.random() < 0.2:
            q2, a2 = t.follow(rng) if (t.follow and rng.random() < 0.7) else pick_task(rng, forbidden)[:2]
            msgs += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2}]
        key = json.dumps(msgs, ensure_ascii=False, sort_keys=True)
        if rng.random() < 0.25:
            msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
        return key, {"messages": msgs}
    return split(rng, N_SFT, N_SFT_HELD, one)


def make_prefs(rng, forbidden):
    def one(rng):
        t = pick_task(rng, forbidden)
        kind = rng.choice(["wrong", "wrong", "wrong", "wrong", "english", "english", "rude", "rude", "empty", "empty"])
        bad = {"wrong": t.wrong, "english": t.en, "rude": rng.choice(RUDE), "empty": rng.choice(EMPTY)}[kind]
        return t.q, {"prompt": [{"role": "user", "content": t.q}], "chosen": [{"role": "assistant", "content": t.a}],
                     "rejected": [{"role": "assistant", "content": bad}]}
    return split(rng, N_PREF, N_PREF_HELD, one)


def build():
    math_train, math_test = make_math(Random(SEED + 4))
    forbidden = frozenset(r["prompt"][0]["content"] for r in math_test)
    files = {}
    files["corpus_train.jsonl"], files["corpus_heldout.jsonl"] = make_corpus(Random(SEED + 1))
    files["sft_train.jsonl"], files["sft_heldout.jsonl"] = make_sft(Random(SEED + 2), forbidden)
    files["preferences_train.jsonl"], files["preferences_heldout.jsonl"] = make_prefs(Random(SEED + 3), forbidden)
    files["math_train.jsonl"], files["math_test.jsonl"] = math_train, math_test
    return files


def write_all(outdir):
    files = build()
    for name, rows in files.items():
        with open(outdir / name, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    return files


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="regenerate in a temp dir and compare byte for byte")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_all(Path(tmp))
            bad = [n for n in files if not (HERE / n).exists()
                   or (HERE / n).read_bytes() != (Path(tmp) / n).read_bytes()]
        for n in bad:
            print(f"DIFFERS: data/{n}")
        print("check failed" if bad else f"ok: {len(files)} files identical")
        sys.exit(1 if bad else 0)
    files = write_all(HERE)
    for name, rows in files.items():
        print(f"{name:28s} {len(rows):6d} rows {(HERE / name).stat().st_size / 1024:8.1f} KB")


if __name__ == "__main__":
    main()
