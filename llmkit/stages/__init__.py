"""One module per stage; each reads top to bottom: config -> validate -> data -> model -> train -> save."""
