"""/api/v1/uploads/: the ISO and image library's uploads (tus 1.0.0 with the creation and
termination extensions) and fetches from a URL. The bytes (PATCH) are served by hosts.tus at
the ASGI level; everything else here."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.audit.services import origin_of
from console.errors import InvalidInput
from hosts.api.serializers import UploadCreateSerializer, UploadFetchSerializer, UploadSerializer
from hosts.selectors import host_list
from hosts.tus import TUS_VERSION, patch_buffered
from hosts.uploads import (
    MAX_LENGTH,
    parse_metadata,
    upload_cancel,
    upload_create,
    upload_fetch,
    upload_get,
    upload_list,
    upload_refresh,
)

TUS_HEADERS = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}


def _tus(response: Response, **extra: str) -> Response:
    for key, value in {**TUS_HEADERS, **extra}.items():
        response[key] = value
    return response


class UploadsView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("host", int, description="only this host's (all of them for its managers)")
        ],
        responses={200: UploadSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        """Your uploads and fetches, newest first (a host's managers: everyone's on that host)."""
        host = None
        if (wanted := request.query_params.get("host")) is not None:
            host = host_list(user=request.user).filter(pk=int(wanted) if wanted.isdigit() else -1).first()
            if host is None:
                raise InvalidInput("No such host.", fields={"host": ["must be a host's id"]})
        rows = upload_list(actor=request.user, host=host)
        return Response(UploadSerializer(rows, many=True).data)

    @extend_schema(
        request=UploadCreateSerializer,
        responses={201: UploadSerializer},
        parameters=[
            OpenApiParameter(
                "Upload-Length", int, OpenApiParameter.HEADER, description="tus: the size in bytes"
            ),
            OpenApiParameter(
                "Upload-Metadata", str, OpenApiParameter.HEADER, description="tus: key base64, ..."
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        """Start an upload into a directory pool: 201 with Location, where the bytes go (PATCH
        with Upload-Offset) and where to ask how many arrived (HEAD)."""
        data: dict[str, Any] = {}
        if isinstance(request.data, dict):
            data.update(request.data)
        data.update(parse_metadata(request.headers.get("Upload-Metadata")))
        if request.headers.get("Upload-Length") is not None:
            data["length"] = request.headers["Upload-Length"]
        upload = upload_create(actor=request.user, data=data, origin=origin_of(request))
        body = UploadSerializer(upload).data
        return _tus(
            Response(body, status=status.HTTP_201_CREATED),
            Location=body["url"],
            **{"Upload-Offset": str(upload.offset)},
        )

    @extend_schema(responses={204: None})
    def options(self, request: Request, *args: Any, **kwargs: Any) -> Response:  # type: ignore[override]
        """tus discovery: the version, extensions and largest size accepted."""
        return _tus(
            Response(status=status.HTTP_204_NO_CONTENT),
            **{
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": "creation,termination",
                "Tus-Max-Size": str(MAX_LENGTH),
            },
        )


class UploadView(APIView):
    @extend_schema(responses={200: UploadSerializer})
    def get(self, request: Request, upload_id: str) -> Response:
        """The upload as it stands (asked of the host's agent while it is under way). HEAD on
        the same address answers tus's way: Upload-Offset and Upload-Length headers."""
        upload = upload_refresh(upload_get(actor=request.user, upload_id=upload_id))
        return Response(UploadSerializer(upload).data)

    @extend_schema(responses={200: OpenApiResponse(description="Upload-Offset and Upload-Length headers")})
    def head(self, request: Request, upload_id: str) -> Response:
        """tus: how many bytes the host holds (resume from there)."""
        upload = upload_refresh(upload_get(actor=request.user, upload_id=upload_id))
        if upload.done and upload.state != upload.State.COMPLETE:
            return _tus(Response(status=status.HTTP_410_GONE))
        return _tus(
            Response(status=status.HTTP_200_OK),
            **{"Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length or 0)},
        )

    @extend_schema(
        request={"application/offset+octet-stream": {"type": "string", "format": "binary"}},
        parameters=[
            OpenApiParameter("Upload-Offset", int, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("Tus-Resumable", str, OpenApiParameter.HEADER, description="1.0.0"),
        ],
        responses={
            204: OpenApiResponse(description="written; Upload-Offset says how far"),
            409: OpenApiResponse(
                description="Upload-Offset is not where the upload is (its offset in the header)"
            ),
            507: OpenApiResponse(description="the pool has no room for the rest"),
        },
    )
    def patch(self, request: Request, upload_id: str) -> Response:
        """tus: send bytes from Upload-Offset on. Under console.asgi (`make run`, the image)
        they stream through to the host as they arrive (hosts.tus); a console served some other
        way reaches this view with the body already read, and sends it on in one piece."""
        status_code, headers, problem = patch_buffered(
            request.user, request.auth, upload_id, dict(request.headers), request.body
        )
        return _tus(Response(problem, status=status_code), **headers)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, upload_id: str) -> Response:
        """tus termination: stop the upload (or fetch) and remove its bytes."""
        upload = upload_get(actor=request.user, upload_id=upload_id)
        upload_cancel(actor=request.user, upload=upload, origin=origin_of(request))
        return _tus(Response(status=status.HTTP_204_NO_CONTENT))


class UploadFetchView(APIView):
    @extend_schema(request=UploadFetchSerializer, responses={202: dict})
    def post(self, request: Request) -> Response:
        """Have the host's agent fetch an ISO or image from a URL into a directory pool: a job
        (its progress is the job's), the upload's row says what came of it."""
        job = upload_fetch(actor=request.user, data=request.data, origin=origin_of(request))
        return Response({"job": job.pk, "upload": job.params["upload"]}, status=status.HTTP_202_ACCEPTED)
