"""The admin surface: Centrifugo's admin API (`/admin/init`, `/admin/auth`, `/admin/api`), two
endpoints of ours for the web UI (`/admin/live`, `/admin/tail`) and the web UI itself
(`app/admin/web/`, plain ES modules served as they are). Routes: `app/admin/handlers.py`."""
