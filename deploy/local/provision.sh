#!/bin/sh
# docker-compose: the AWS resources the worker expects, on LocalStack.
set -eu
aws s3 mb s3://edc-uploads
aws s3 mb s3://imaging-labs
aws s3 mb s3://edc-pipeline-logs
dlq_url=$(aws sqs create-queue --queue-name edc-image-pipeline-dlq --query QueueUrl --output text)
dlq_arn=$(aws sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn --query Attributes.QueueArn --output text)
queue_url=$(aws sqs create-queue --queue-name edc-image-pipeline \
  --attributes "{\"VisibilityTimeout\":\"60\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$dlq_arn\\\",\\\"maxReceiveCount\\\":\\\"5\\\"}\"}" \
  --query QueueUrl --output text)
queue_arn=$(aws sqs get-queue-attributes --queue-url "$queue_url" --attribute-names QueueArn --query Attributes.QueueArn --output text)
aws sns create-topic --name edc-pipeline-admin
aws s3api put-bucket-notification-configuration --bucket edc-uploads --notification-configuration \
  "{\"QueueConfigurations\":[{\"QueueArn\":\"$queue_arn\",\"Events\":[\"s3:ObjectCreated:*\"],\"Filter\":{\"Key\":{\"FilterRules\":[{\"Name\":\"prefix\",\"Value\":\"subjecteventcrffile/\"}]}}}]}"
echo "provisioned"
