#!/bin/sh
# The official nginx image's template step, for the Debian-nginx stand-in (deploy/local/images.sh): every
# /etc/nginx/templates/*.template becomes /etc/nginx/conf.d/<name> with envsubst restricted to the variables
# that are set (nginx's own lower-case $variables stay), then nginx runs in the foreground.
set -e
templates="${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}"
output="${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}"
suffix="${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}"
defined="$(printf '${%s} ' $(env | cut -d= -f1))"
mkdir -p "$output"
for template in "$templates"/*"$suffix"; do
  [ -f "$template" ] || continue
  name="$(basename "$template" "$suffix")"
  echo "$0: rendering $template to $output/$name" >&2
  envsubst "$defined" <"$template" >"$output/$name"
done
exec "$@"
