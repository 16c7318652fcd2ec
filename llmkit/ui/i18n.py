"""Every label of the page in Spanish and English, with the words of the docs (docs/es/glosario.md:
ejecución = run, receta = recipe, etapa = stage, paso = step, pérdida = loss, checkpoint)."""

from __future__ import annotations

LANGS = ("es", "en")

LABELS: dict[str, tuple[str, str]] = {
    "title": ("llmkit: la vida entera de un modelo", "llmkit: the whole life of a model"),
    "subtitle": ("Cada botón ejecuta el mismo comando que escribirías en la terminal; se muestra para copiarlo.",
                 "Every button runs the same command you would type in a terminal; it is shown so you can copy it."),
    "lang": ("Idioma / Language", "Idioma / Language"),
    # tabs
    "tab_recipes": ("Recetas", "Recipes"),
    "tab_runs": ("Ejecuciones", "Runs"),
    "tab_eval": ("Evaluación", "Evaluation"),
    "tab_chat": ("Chat", "Chat"),
    "tab_serve": ("Servir", "Serve"),
    # recipes
    "recipe": ("Receta", "Recipe"),
    "stage": ("Etapa", "Stage"),
    "whole_chain": ("toda la cadena (llmkit run)", "the whole chain (llmkit run)"),
    "yaml": ("YAML de la etapa (editable: los cambios se pasan como --clave valor)",
             "The stage's YAML (editable: changes are passed as --key value)"),
    "keys": ("Claves: valor en la receta, valor por defecto y ayuda (lo mismo que `llmkit <etapa> --help`)",
             "Keys: value in the recipe, default and help (the same as `llmkit <stage> --help`)"),
    "key_cols": ("clave|receta|por defecto|ayuda", "key|recipe|default|help"),
    "command": ("Comando", "Command"),
    "check": ("Comprobar", "Check"),
    "start": ("Iniciar / reanudar", "Start / resume"),
    "stop": ("Detener (guarda un checkpoint)", "Stop (saves a checkpoint)"),
    "message": ("Mensaje", "Message"),
    "progress": ("Progreso", "Progress"),
    "curves": ("Curvas (metrics.jsonl)", "Curves (metrics.jsonl)"),
    "log": ("Registro", "Log"),
    "ok_valid": ("Configuración válida: nada iniciado todavía.", "Valid configuration: nothing started yet."),
    "started": ("Iniciado", "Started"),
    "stopping": ("Señal SIGTERM enviada: la etapa guarda un checkpoint y se detiene; «Iniciar» reanuda.",
                 "SIGTERM sent: the stage saves a checkpoint and stops; «Start» resumes."),
    "no_job": ("Nada en marcha para esta etapa.", "Nothing running for this stage."),
    "state_running": ("en marcha", "running"),
    "state_finished": ("terminada", "finished"),
    "state_stopped": ("detenida (checkpoint guardado)", "stopped (checkpoint saved)"),
    "state_failed": ("falló", "failed"),
    "state_lost": ("interrumpida sin estado", "ended without a status"),
    "step": ("paso", "step"),
    "eta": ("tiempo restante", "ETA"),
    "checkpoints": ("checkpoints", "checkpoints"),
    "points": ("puntos", "points"),
    # runs
    "refresh": ("Actualizar", "Refresh"),
    "runs_table": ("Ejecuciones bajo runs/", "Runs under runs/"),
    "run_cols": ("ejecución|etapa|estado|entradas|métricas clave|tiempo|terminada",
                 "run|stage|status|inputs|key metrics|wall time|finished"),
    "chain": ("Cadena de la receta", "The recipe's chain"),
    "run": ("Ejecución", "Run"),
    "pictures": ("Imágenes (loss.png y otras)", "Pictures (loss.png and others)"),
    "samples": ("Muestras (samples.jsonl)", "Samples (samples.jsonl)"),
    "status_complete": ("completa", "complete"),
    "status_partial": ("parcial", "partial"),
    "status_running": ("en marcha", "running"),
    "status_failed": ("falló", "failed"),
    "status_stopped": ("detenida", "stopped"),
    "no_runs": ("Todavía no hay ejecuciones.", "No runs yet."),
    # eval
    "eval_runs": ("Ejecuciones a evaluar", "Runs to evaluate"),
    "tasks": ("Grupo de tareas", "Task group"),
    "limit": ("Ejemplos por tarea (--limit)", "Examples per task (--limit)"),
    "engine": ("Motor", "Engine"),
    "evaluate": ("Evaluar", "Evaluate"),
    "results": ("Resultados a comparar", "Results to compare"),
    "compare": ("Comparar (--compare)", "Compare (--compare)"),
    "compare_chart": ("Gráfico de la comparación", "Comparison chart"),
    "eval_state": ("Estado de la evaluación", "Evaluation state"),
    "no_eval": ("Ninguna evaluación iniciada desde esta página.", "No evaluation started from this page."),
    # chat
    "run_a": ("Ejecución A", "Run A"),
    "run_b": ("Ejecución B (opcional, misma pregunta)", "Run B (optional, same prompt)"),
    "system": ("Prompt de sistema", "System prompt"),
    "temperature": ("Temperatura (0: decodificación voraz)", "Temperature (0: greedy decoding)"),
    "max_tokens": ("Tokens máximos", "Max tokens"),
    "prompt": ("Tu mensaje", "Your message"),
    "send": ("Enviar", "Send"),
    "clear": ("Borrar", "Clear"),
    "backend": ("Dónde se genera", "Where it generates"),
    "in_process": ("transformers en este proceso", "transformers in this process"),
    # serve
    "serve_run": ("Ejecución a servir", "Run to serve"),
    "port": ("Puerto", "Port"),
    "serve_start": ("Iniciar llmkit serve", "Start llmkit serve"),
    "serve_stop": ("Detener el servidor", "Stop the server"),
    "snippet": ("Cliente openai para este servidor", "openai client for this server"),
    "serve_state": ("Estado del servidor", "Server state"),
    "no_server": ("Ningún servidor iniciado para esta ejecución.", "No server started for this run."),
    "state_starting": ("arrancando (todavía no responde)", "starting (not answering yet)"),
    "state_server_stopped": ("detenido", "stopped"),
    "stopping_server": ("Señal SIGTERM enviada: el servidor se detiene.", "SIGTERM sent: the server stops."),
}


def t(key: str, lang: str) -> str:
    es, en = LABELS[key]
    return en if lang == "en" else es


def cols(key: str, lang: str) -> list[str]:
    return t(key, lang).split("|")
